package atls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Evidence is issued before anybody is authenticated: every aTLS server that attests itself, and the
// verification service, quote for whoever connects. A quote occupies the node's TPM (or its firmware) for a
// while, so a flood of handshakes would queue every legitimate quote, a join's or a recovery's, behind it.
// An IssuanceLimiter bounds that: each source (IP address; an IPv6 /64) gets a token bucket and may have only
// a few issuances pending, and all sources together share a fixed number of concurrent issuances with a
// bounded queue. What exceeds a bound is refused at once, never queued: a flooding source is limited to its
// own share, and a request from another source waits at most behind the pending issuances of each source.

// IssuanceLimits configure an [IssuanceLimiter].
type IssuanceLimits struct {
	// Concurrent is how many issuances run at once, all sources together.
	Concurrent int
	// Queue is how many admitted issuances may wait for one of the Concurrent slots; more are refused.
	Queue int
	// PerSource is how many issuances one source may have running or waiting at once.
	PerSource int
	// Rate is how many issuances per second one source may start on average, Burst how many at once.
	Rate  rate.Limit
	Burst int
	// Sources is how many sources the limiter tracks at once. When it tracks that many, it forgets sources
	// that are idle (nothing pending, bucket full); a new source is refused while none is.
	Sources int
}

// DefaultIssuanceLimits are the limits of every aTLS server and verification service. A legitimate client
// (the CLI, a joining node, a join service asking the key service) starts at most a few handshakes a second
// from one address; a node's TPM quotes in tens of milliseconds.
var DefaultIssuanceLimits = IssuanceLimits{Concurrent: 4, Queue: 256, PerSource: 8, Rate: 20, Burst: 60, Sources: 4096}

// ErrIssuanceLimited is returned (wrapped) when an issuance is refused by an [IssuanceLimiter].
var ErrIssuanceLimited = errors.New("too many requests for attestation evidence")

// IssuanceLimiter limits evidence issuance per source and in total (see [IssuanceLimits]). It is safe for
// concurrent use.
type IssuanceLimiter struct {
	limits IssuanceLimits
	now    func() time.Time
	slots  chan struct{}

	mu      sync.Mutex
	pending int // admitted issuances, running or waiting
	sources map[netip.Prefix]*issuanceSource

	admitted, refused atomic.Uint64
}

type issuanceSource struct {
	bucket  *rate.Limiter
	pending int
}

// NewIssuanceLimiter returns a limiter with limits l.
func NewIssuanceLimiter(l IssuanceLimits) (*IssuanceLimiter, error) {
	if l.Concurrent < 1 || l.Queue < 0 || l.PerSource < 1 || l.Rate <= 0 || l.Burst < 1 || l.Sources < 1 {
		return nil, fmt.Errorf("issuance limits %+v: every limit must be positive (the queue may be empty)", l)
	}
	return &IssuanceLimiter{limits: l, now: time.Now, slots: make(chan struct{}, l.Concurrent), sources: map[netip.Prefix]*issuanceSource{}}, nil
}

// Stats returns how many issuances the limiter admitted and refused so far.
func (l *IssuanceLimiter) Stats() (admitted, refused uint64) {
	return l.admitted.Load(), l.refused.Load()
}

// Acquire admits one issuance for the peer at addr, or refuses it with an error wrapping
// [ErrIssuanceLimited]. An admitted issuance waits for a free slot (at most behind the bounded queue, or until
// ctx ends); the caller must call release when the evidence is issued.
func (l *IssuanceLimiter) Acquire(ctx context.Context, addr net.Addr) (release func(), err error) {
	src := sourceOf(addr)
	l.mu.Lock()
	s, err := l.admit(src)
	if err != nil {
		l.mu.Unlock()
		l.refused.Add(1)
		return nil, err
	}
	s.pending++
	l.pending++
	l.mu.Unlock()
	done := func() {
		l.mu.Lock()
		s.pending--
		l.pending--
		l.mu.Unlock()
	}
	select {
	case l.slots <- struct{}{}:
	case <-ctx.Done():
		done()
		return nil, fmt.Errorf("waiting to issue attestation evidence: %w", ctx.Err())
	}
	l.admitted.Add(1)
	var once sync.Once
	return func() {
		once.Do(func() {
			<-l.slots
			done()
		})
	}, nil
}

// admit decides about one more issuance for src; l.mu is held.
func (l *IssuanceLimiter) admit(src netip.Prefix) (*issuanceSource, error) {
	now := l.now()
	s := l.sources[src]
	if s == nil {
		if len(l.sources) >= l.limits.Sources {
			l.forgetIdle(now)
		}
		if len(l.sources) >= l.limits.Sources {
			return nil, fmt.Errorf("%w: requests from more than %d sources at once", ErrIssuanceLimited, l.limits.Sources)
		}
		s = &issuanceSource{bucket: rate.NewLimiter(l.limits.Rate, l.limits.Burst)}
		l.sources[src] = s
	}
	if s.pending >= l.limits.PerSource {
		return nil, fmt.Errorf("%w: %s has %d requests pending", ErrIssuanceLimited, src, s.pending)
	}
	if l.pending >= l.limits.Concurrent+l.limits.Queue {
		return nil, fmt.Errorf("%w: %d requests pending", ErrIssuanceLimited, l.pending)
	}
	if !s.bucket.AllowN(now, 1) {
		return nil, fmt.Errorf("%w: %s exceeds %v requests per second", ErrIssuanceLimited, src, float64(l.limits.Rate))
	}
	return s, nil
}

// forgetIdle drops sources with nothing pending whose bucket is full again: forgetting them changes nothing.
func (l *IssuanceLimiter) forgetIdle(now time.Time) {
	for src, s := range l.sources {
		if s.pending == 0 && s.bucket.TokensAt(now) >= float64(l.limits.Burst) {
			delete(l.sources, src)
		}
	}
}

// sourceOf is the source an address counts for: its IP address, for IPv6 its /64 (what one host is usually
// given). Addresses that are not IP addresses (unix sockets) count as one source.
func sourceOf(addr net.Addr) netip.Prefix {
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case nil:
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			ip = ap.Addr()
		}
	}
	ip = ip.Unmap()
	switch {
	case ip.Is4():
		return netip.PrefixFrom(ip, 32)
	case ip.Is6():
		p, _ := ip.Prefix(64)
		return p
	}
	return netip.Prefix{}
}

// ServerOption configures an aTLS server ([CreateServerConfig]).
type ServerOption func(*serverOptions)

type serverOptions struct {
	limit *IssuanceLimiter
}

// WithIssuanceLimiter makes the server issue evidence only within l's limits; a handshake that l refuses
// fails before any evidence is issued for it.
func WithIssuanceLimiter(l *IssuanceLimiter) ServerOption {
	return func(o *serverOptions) { o.limit = l }
}

func newServerOptions(opts []ServerOption) *serverOptions {
	o := &serverOptions{}
	for _, opt := range opts {
		opt(o)
	}
	return o
}

// acquire admits the issuance of one handshake.
func (o *serverOptions) acquire(chi *tls.ClientHelloInfo) (release func(), err error) {
	if o.limit == nil {
		return func() {}, nil
	}
	release, err = o.limit.Acquire(chi.Context(), chi.Conn.RemoteAddr())
	if err != nil {
		return nil, fmt.Errorf("aTLS: %w", err)
	}
	return release, nil
}

// LimitIssuance makes a server with these credentials issue evidence within l's limits instead of the
// [DefaultIssuanceLimits] every server with an issuer gets. It must be called before the first handshake.
func (c *Credentials) LimitIssuance(l *IssuanceLimiter) *Credentials {
	c.limit = l
	return c
}

// serverLimiter is the limiter of a server's handshakes: the one given, or one with the default limits.
func (c *Credentials) serverLimiter() (*IssuanceLimiter, error) {
	if c.limit != nil || c.issuer == nil {
		return c.limit, nil
	}
	return NewIssuanceLimiter(DefaultIssuanceLimits)
}
