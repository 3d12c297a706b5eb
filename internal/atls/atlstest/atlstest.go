// Package atlstest helps the tests of services that attest themselves under an issuance limit: it floods a
// service from one loopback source while a test talks to it from another, and counts the evidence the
// service issues. It is for tests only.
package atlstest

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// CountingIssuer counts the evidence it issues (each is a quote of the TPM behind Issuer).
type CountingIssuer struct {
	attestation.Issuer
	n atomic.Int64
}

// Issue counts and issues.
func (c *CountingIssuer) Issue(ctx context.Context, nonce, userData []byte) ([]byte, error) {
	c.n.Add(1)
	return c.Issuer.Issue(ctx, nonce, userData)
}

// Count is how much evidence was issued.
func (c *CountingIssuer) Count() int64 { return c.n.Load() }

// DialFrom dials TCP addresses from the loopback address src, so that a test has several sources on one host.
func DialFrom(src string) func(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
}

// Flood is a number of flooders, each making attempts one after the other until Stop.
type Flood struct {
	flooders int
	wg       sync.WaitGroup
	attempts atomic.Int64
	done     chan struct{}
}

// StartFlood starts flooders goroutines that each call attempt again and again, counting the attempts. An
// attempt that returns an error fails the test and ends its flooder.
func StartFlood(t testing.TB, flooders int, attempt func() error) *Flood {
	f := &Flood{flooders: flooders, done: make(chan struct{})}
	for range flooders {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			for {
				select {
				case <-f.done:
					return
				default:
				}
				f.attempts.Add(1)
				if err := attempt(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	return f
}

// Attempts is the number of attempts the flood made so far.
func (f *Flood) Attempts() int64 { return f.attempts.Load() }

// AwaitBurst returns once quotes issued burst times and the flood hammers on past them (at least two more
// attempts per flooder): from then on the flooding source is past its burst.
func (f *Flood) AwaitBurst(quotes *CountingIssuer, burst int64) {
	for quotes.Count() < burst || f.Attempts() < burst+2*int64(f.flooders) {
		time.Sleep(time.Millisecond)
	}
}

// Stop ends the flood and returns once every flooder has its last attempt's answer.
func (f *Flood) Stop() {
	close(f.done)
	f.wg.Wait()
}
