package atls

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/constellation-dev/constellation/internal/atls/atlstest"
	"github.com/constellation-dev/constellation/internal/attestation"
)

func tcp(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 4242} }

// A source gets its burst, then is refused; other sources are not affected; a source never has more than
// PerSource pending.
func TestIssuanceLimiterPerSource(t *testing.T) {
	l, err := NewIssuanceLimiter(IssuanceLimits{Concurrent: 8, Queue: 0, PerSource: 2, Rate: 1e-9, Burst: 3, Sources: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := tcp("10.0.0.1")
	r1, err := l.Acquire(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := l.Acquire(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	// Two pending: the third is refused although the bucket has a token left.
	if _, err := l.Acquire(ctx, a); !errors.Is(err, ErrIssuanceLimited) {
		t.Fatalf("third pending request of a source: %v", err)
	}
	r1()
	r1() // releasing twice is harmless
	r3, err := l.Acquire(ctx, a)
	if err != nil {
		t.Fatalf("after a release: %v", err)
	}
	r2()
	r3()
	// The burst (3) is used up: refused, with nothing pending.
	if _, err := l.Acquire(ctx, a); !errors.Is(err, ErrIssuanceLimited) {
		t.Fatalf("past the burst: %v", err)
	}
	// Another source, and the same IPv4 address mapped into IPv6 is the same source.
	if _, err := l.Acquire(ctx, tcp("::ffff:10.0.0.1")); !errors.Is(err, ErrIssuanceLimited) {
		t.Fatalf("the same source as IPv4-mapped IPv6: %v", err)
	}
	rb, err := l.Acquire(ctx, tcp("2001:db8::1"))
	if err != nil {
		t.Fatal(err)
	}
	rb()
	// Two sources tracked (the limit), neither idle (a's bucket is empty): a third source is refused.
	if _, err := l.Acquire(ctx, tcp("10.0.0.3")); !errors.Is(err, ErrIssuanceLimited) {
		t.Fatalf("a third source: %v", err)
	}
	if admitted, refused := l.Stats(); admitted != 4 || refused != 4 {
		t.Fatalf("stats %d admitted, %d refused", admitted, refused)
	}
	// The same /64 is the same source.
	for range 2 {
		r, err := l.Acquire(ctx, tcp("2001:db8::2"))
		if err != nil {
			t.Fatal(err)
		}
		r()
	}
	if _, err := l.Acquire(ctx, tcp("2001:db8::3")); !errors.Is(err, ErrIssuanceLimited) {
		t.Fatalf("another address of a /64 past its burst: %v", err)
	}
}

// All sources together: Concurrent run, Queue wait, more are refused; a waiting request whose context ends
// leaves the queue.
func TestIssuanceLimiterTotal(t *testing.T) {
	l, err := NewIssuanceLimiter(IssuanceLimits{Concurrent: 1, Queue: 1, PerSource: 4, Rate: 1, Burst: 4, Sources: 8})
	if err != nil {
		t.Fatal(err)
	}
	running, err := l.Acquire(context.Background(), tcp("10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	waited := make(chan error, 1)
	go func() {
		_, err := l.Acquire(ctx, tcp("10.0.0.2"))
		waited <- err
	}()
	// The queue is full once the waiting request is admitted; a third source is refused at once.
	for {
		l.mu.Lock()
		pending := l.pending
		l.mu.Unlock()
		if pending == 2 {
			break
		}
		runtime.Gosched()
	}
	if _, err := l.Acquire(context.Background(), tcp("10.0.0.3")); !errors.Is(err, ErrIssuanceLimited) {
		t.Fatalf("past the queue: %v", err)
	}
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("a waiting request whose context ended: %v", err)
	}
	running()
	r, err := l.Acquire(context.Background(), tcp("10.0.0.3"))
	if err != nil {
		t.Fatalf("after the slot is free: %v", err)
	}
	r()
}

func TestIssuanceLimitsValid(t *testing.T) {
	if _, err := NewIssuanceLimiter(DefaultIssuanceLimits); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []IssuanceLimits{{}, {Concurrent: 1, PerSource: 1, Rate: 0, Burst: 1, Sources: 1}, {Concurrent: 1, PerSource: 1, Rate: 1, Burst: 1, Sources: 0}} {
		if _, err := NewIssuanceLimiter(bad); err == nil {
			t.Errorf("limits %+v accepted", bad)
		}
	}
}

// A server that attests itself to anyone (as the init and recovery service does) under a flood of handshakes
// from one source: a client from another source completes its attested handshake, the flooding source gets
// its burst of quotes, and every other flooding handshake is refused before anything is issued for it.
func TestHandshakeDuringAFlood(t *testing.T) {
	node, v := newNode(t)
	const burst = 5
	limit, err := NewIssuanceLimiter(IssuanceLimits{Concurrent: 2, Queue: 8, PerSource: 2, Rate: 1e-9, Burst: burst, Sources: 16})
	if err != nil {
		t.Fatal(err)
	}
	quotes := &atlstest.CountingIssuer{Issuer: node.Issuer}
	serverCfg, err := CreateServerConfig(quotes, nil, WithIssuanceLimiter(limit))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				tc := tls.Server(conn, serverCfg)
				if tc.Handshake() == nil {
					tc.Write([]byte("ok"))
				}
			}()
		}
	}()
	handshakeFrom := func(src string) error {
		conn, err := atlstest.DialFrom(src)(context.Background(), ln.Addr().String())
		if err != nil {
			return err
		}
		defer conn.Close()
		cfg, err := CreateClientConfig(nil, []attestation.Validator{v})
		if err != nil {
			return err
		}
		tc := tls.Client(conn, cfg)
		if err := tc.Handshake(); err != nil {
			return err
		}
		buf := make([]byte, 2)
		_, err = io.ReadFull(tc, buf)
		return err
	}

	const flooders = 6
	var ok atomic.Int64
	flood := atlstest.StartFlood(t, flooders, func() error {
		if handshakeFrom("127.0.0.2") == nil {
			ok.Add(1)
		}
		return nil
	})
	flood.AwaitBurst(quotes, burst)
	legit := handshakeFrom("127.0.0.3")
	flood.Stop()
	if legit != nil {
		t.Fatalf("an attested handshake from another source during the flood: %v", legit)
	}
	admitted, refused := limit.Stats()
	if n := quotes.Count(); n != burst+1 || ok.Load() != burst || admitted != burst+1 || refused != uint64(flood.Attempts())-burst {
		t.Fatalf("%d quotes for %d flooding handshakes (%d completed) and one other; limiter: %d admitted, %d refused; want the flooding source's burst (%d) and the other's", n, flood.Attempts(), ok.Load(), admitted, refused, burst)
	}
}
