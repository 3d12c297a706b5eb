package keyservice

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/provider"
)

// ControlPlaneOnly returns a validator that accepts what v accepts, and only from a node that isControlPlane
// names a control-plane node by the subject of its attestation key certificate (which v has checked against
// the provider's AK roots). A caller of a key service uses it: whatever address the host's metadata gave it,
// it talks only to a key service on an attested control-plane node of its cluster (v checks the cluster's
// measurements and cluster ID).
func ControlPlaneOnly(v attestation.Validator, isControlPlane func(ctx context.Context, name string) (bool, error)) attestation.Validator {
	return controlPlaneValidator{Validator: v, isControlPlane: isControlPlane}
}

type controlPlaneValidator struct {
	attestation.Validator
	isControlPlane func(ctx context.Context, name string) (bool, error)
}

func (v controlPlaneValidator) Validate(ctx context.Context, evidence, nonce []byte) ([]byte, error) {
	userData, err := v.Validator.Validate(ctx, evidence, nonce)
	if err != nil {
		return nil, err
	}
	doc, err := attestation.ParseDocument(evidence)
	if err != nil {
		return nil, err
	}
	name := doc.AttestationKeySubject()
	if name == "" {
		return nil, errors.New("the key service's attestation key certificate names no node; a key service runs on a control-plane node only")
	}
	ok, err := v.isControlPlane(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("asking the provider whether %q is a control-plane node: %w", name, err)
	}
	if !ok {
		return nil, fmt.Errorf("node %q is no control-plane node; a key service runs on control-plane nodes only", name)
	}
	return userData, nil
}

// ControlPlaneAddrs returns the addresses of the key services of the cluster: one on every control-plane node
// the provider lists, the one at first (an IP address, if not empty) first. The provider is the host: a
// caller trusts a key service only by its attestation ([ControlPlaneOnly]), never by its address.
func ControlPlaneAddrs(md Instances, first string) func(ctx context.Context) ([]string, error) {
	return controlPlaneAddrs(md, first, Port)
}

// ControlPlanePolicyAddrs returns the addresses of the key services' policy ports ([PolicyPort]), as
// [ControlPlaneAddrs] orders them.
func ControlPlanePolicyAddrs(md Instances, first string) func(ctx context.Context) ([]string, error) {
	return controlPlaneAddrs(md, first, PolicyPort)
}

// Instances lists the nodes the provider runs.
type Instances interface {
	Instances(ctx context.Context) ([]provider.Instance, error)
}

func controlPlaneAddrs(md Instances, first string, port int) func(ctx context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		list, err := md.Instances(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing the control-plane nodes: %w", err)
		}
		var addrs []string
		for _, inst := range list {
			if inst.Role != provider.RoleControlPlane || inst.IP == "" {
				continue
			}
			addr := net.JoinHostPort(inst.IP, strconv.Itoa(port))
			if inst.IP == first {
				addrs = slices.Insert(addrs, 0, addr)
			} else {
				addrs = append(addrs, addr)
			}
		}
		if len(addrs) == 0 {
			return nil, errors.New("the provider lists no control-plane node")
		}
		return addrs, nil
	}
}

// Pool reaches whichever key service of the cluster answers: it tries the addresses Endpoints returns in
// order, over mutual aTLS (Issuer attests the caller, Validator decides which key services it trusts), and
// goes on to the next while a key service cannot be reached or fails its attestation. An answer of a key
// service (a key, or a refusal) ends the call: every key service shares the same record and decides alike.
// A pool of [NewPolicyPool] reaches the policy ports instead, where the caller is not attested.
type Pool struct {
	Endpoints func(ctx context.Context) ([]string, error)
	Issuer    attestation.Issuer
	Validator attestation.Validator
	// Attempt bounds one try at one key service; 0: 30 seconds.
	Attempt time.Duration

	// policyPort: the clients are [NewPolicyClient]'s, on the policy ports, without Issuer.
	policyPort bool

	mu      sync.Mutex
	clients map[string]*Client // one connection per key service, kept for later calls
}

// NewPolicyPool returns a pool of the key services' policy ports ([PolicyPort]) at the addresses endpoints
// returns ([ControlPlanePolicyAddrs]): only the key service attests itself there, validator decides which
// key services the caller trusts, and the caller proves nothing, so a key service answers it whatever image
// the caller's node runs, also one the measurement policy in force no longer accepts. Only the measurement
// policy calls work on its clients; what a key service answers there is nothing secret.
func NewPolicyPool(endpoints func(ctx context.Context) ([]string, error), validator attestation.Validator) *Pool {
	return &Pool{Endpoints: endpoints, Validator: validator, policyPort: true}
}

// Do calls fn with the client of each key service in turn until one answers.
func (p *Pool) Do(ctx context.Context, fn func(ctx context.Context, c *Client) error) error {
	if p.Endpoints == nil || (p.Issuer == nil && !p.policyPort) || p.Validator == nil {
		return errors.New("a key service pool needs endpoints, an issuer and a validator")
	}
	addrs, err := p.Endpoints(ctx)
	if err != nil {
		return err
	}
	attempt := p.Attempt
	if attempt == 0 {
		attempt = 30 * time.Second
	}
	var errs []error
	for _, addr := range addrs {
		c, err := p.client(addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		actx, cancel := context.WithTimeout(ctx, attempt)
		err = fn(actx, c)
		cancel()
		if err == nil {
			return nil
		}
		if !unreachable(err) || ctx.Err() != nil {
			return err
		}
		errs = append(errs, fmt.Errorf("key service %s: %w", addr, err))
	}
	return fmt.Errorf("no key service answered: %w", errors.Join(errs...))
}

// unreachable tells whether a call failed before a key service answered it: the connection or the
// attestation failed, or the attempt ran out of time.
func unreachable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

func (p *Pool) client(addr string) (*Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clients[addr]; ok {
		return c, nil
	}
	var c *Client
	var err error
	if p.policyPort {
		c, err = NewPolicyClient(addr, []attestation.Validator{p.Validator})
	} else {
		c, err = NewClient(addr, p.Issuer, []attestation.Validator{p.Validator})
	}
	if err != nil {
		return nil, err
	}
	if p.clients == nil {
		p.clients = map[string]*Client{}
	}
	p.clients[addr] = c
	return c, nil
}

// Close closes every connection of the pool.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for addr, c := range p.clients {
		errs = append(errs, c.Close())
		delete(p.clients, addr)
	}
	return errors.Join(errs...)
}
