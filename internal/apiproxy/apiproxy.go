// Package apiproxy is a node's own endpoint of the Kubernetes API: a TCP proxy in the node's bootstrapper on a
// loopback address (Address), in front of the API servers of the cluster's control-plane nodes. It is the
// cluster's control-plane endpoint (kubeadm's controlPlaneEndpoint, the server of every kubelet's, kube-proxy's
// and kubeadm's kubeconfig), so that no control-plane node is special: while one is down, or after it was
// replaced, every node still reaches the API through the others.
//
// The proxy only moves bytes: TLS runs end to end between the client and an API server, and the clients trust
// the cluster CA only (the API servers' certificates name Address). Which control-plane nodes there are comes
// from the provider, the host, which is not trusted; that is made safe by how the proxy reaches them: a
// control-plane node's own API server over loopback, every other one only through the node's WireGuard
// interface (the socket is bound to it, MeshDialer). WireGuard delivers a packet only to the peer whose key
// owns the destination address, and a node has as peers only the nodes the cluster admitted and still lists.
// So a node that the cluster removed or quarantined (its peers dropped it) reaches no API server through its
// endpoint, and an address the host names outside the mesh (its own, say, with a relay behind it) is never
// dialled: the proxy has no route around the mesh.
//
// Backends are checked every few seconds (a TCP connection); a new connection goes to the node's own API server
// first (on a control-plane node), then to the healthy others in turn, then to the rest, so that it fails over
// as soon as a backend refuses or does not answer.
package apiproxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Address is the node's API endpoint: the proxy listens here on every node, and kubeadm's controlPlaneEndpoint
// and the kubelets' kubeconfigs name it. The API servers' certificates carry its address.
var Address = netip.MustParseAddrPort("127.0.0.1:7445")

// APIServerPort is the API servers' port on the control-plane nodes (kubeadm's bindPort).
const APIServerPort = 6443

// Proxy forwards connections to the cluster's API servers.
type Proxy struct {
	// Local is the node's own API server, on a control-plane node (loopback, APIServerPort): tried first, and
	// dialled directly. Invalid on a worker.
	Local netip.AddrPort
	// Remote returns the API servers of the other control-plane nodes (their node addresses, APIServerPort),
	// as the provider lists them.
	Remote func(ctx context.Context) ([]netip.AddrPort, error)
	// DialRemote connects to a remote API server; it must not leave the node but through the mesh
	// (MeshDialer).
	DialRemote func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)
	// DialTimeout bounds each connection attempt to a backend (a node without a tunnel does not answer);
	// zero: 2 seconds.
	DialTimeout time.Duration
	Log         *slog.Logger

	next    atomic.Uint64
	mu      sync.Mutex
	remotes []netip.AddrPort // as last listed
	healthy map[netip.AddrPort]bool
}

func (p *Proxy) log() *slog.Logger {
	if p.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Log
}

func (p *Proxy) timeout() time.Duration {
	if p.DialTimeout == 0 {
		return 2 * time.Second
	}
	return p.DialTimeout
}

// dial connects to backend addr: the local API server directly, any other through DialRemote.
func (p *Proxy) dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout())
	defer cancel()
	if p.Local.IsValid() && addr == p.Local {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr.String())
	}
	if p.DialRemote == nil {
		return nil, errors.New("the proxy has no way to reach other control-plane nodes")
	}
	return p.DialRemote(ctx, addr)
}

// Check lists the remote backends again and connects to every backend once, keeping which answer.
func (p *Proxy) Check(ctx context.Context) {
	remotes, err := p.Remote(ctx)
	if err != nil {
		p.log().Warn("listing the control-plane nodes failed; keeping the last list", "error", err)
		p.mu.Lock()
		remotes = p.remotes
		p.mu.Unlock()
	}
	remotes = slices.DeleteFunc(slices.Clone(remotes), func(a netip.AddrPort) bool { return a == p.Local })
	backends := remotes
	if p.Local.IsValid() {
		backends = append([]netip.AddrPort{p.Local}, remotes...)
	}
	results := make([]error, len(backends))
	var wg sync.WaitGroup
	for i, addr := range backends {
		wg.Go(func() {
			c, err := p.dial(ctx, addr)
			if err == nil {
				c.Close()
			}
			results[i] = err
		})
	}
	wg.Wait()
	healthy := map[netip.AddrPort]bool{}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, addr := range backends {
		ok := results[i] == nil
		healthy[addr] = ok
		if was, known := p.healthy[addr]; !known || was != ok {
			if ok {
				p.log().Info("API server reachable", "backend", addr.String())
			} else {
				p.log().Info("API server not reachable", "backend", addr.String(), "reason", results[i].Error())
			}
		}
	}
	p.remotes, p.healthy = remotes, healthy
}

// Watch checks the backends every interval until ctx ends.
func (p *Proxy) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		p.Check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Order returns the backends to try for a new connection: the node's own API server, the remote ones that
// answered the last check (each connection starting with the next in turn), then the others, in case the
// check's view is stale.
func (p *Proxy) Order() []netip.AddrPort {
	p.mu.Lock()
	var up, rest []netip.AddrPort
	for _, a := range p.remotes {
		if p.healthy[a] {
			up = append(up, a)
		} else {
			rest = append(rest, a)
		}
	}
	p.mu.Unlock()
	n := p.next.Add(1) - 1
	rotate := func(l []netip.AddrPort) []netip.AddrPort {
		if len(l) == 0 {
			return nil
		}
		k := int(n % uint64(len(l)))
		return append(slices.Clone(l[k:]), l[:k]...)
	}
	var out []netip.AddrPort
	if p.Local.IsValid() {
		out = append(out, p.Local)
	}
	return append(append(out, rotate(up)...), rotate(rest)...)
}

// Serve accepts connections on ln and forwards each to an API server, until ln is closed.
func (p *Proxy) Serve(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go p.forward(c)
	}
}

func (p *Proxy) forward(client net.Conn) {
	defer client.Close()
	var backend net.Conn
	var errs []error
	for _, addr := range p.Order() {
		c, err := p.dial(context.Background(), addr)
		if err == nil {
			backend = c
			break
		}
		errs = append(errs, err)
	}
	if backend == nil {
		p.log().Warn("no API server accepts the connection", "error", errors.Join(errs...))
		return
	}
	defer backend.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		// Pass the end of one direction on; the other may still carry data.
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go pipe(backend, client)
	go pipe(client, backend)
	<-done
	<-done
}
