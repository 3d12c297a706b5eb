package joinservice

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/keyservice"
	"github.com/constellation-dev/constellation/internal/kms"
)

// FetchConfigKey gets the key of the join configuration's MAC from whichever key service of endpoints answers
// (see keyservice.ControlPlaneAddrs), over mutual aTLS with issuer (this node's vTPM, mini-vtpm). The join
// service trusts a key service by what it knows without the configuration, which the key is to authenticate:
// the key service must run on a vTPM that akRoots (the provider's attestation-key CA) certified for a node
// that roles names a control-plane node, with this node's own boot measurements and its cluster ID (see
// [OwnMemberPolicy]).
func FetchConfigKey(ctx context.Context, endpoints func(ctx context.Context) ([]string, error), issuer attestation.Issuer, akRoots []*x509.Certificate, roles Roles) ([]byte, error) {
	p, err := ownKeyServices(ctx, endpoints, issuer, akRoots, roles)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	var key []byte
	if err := p.Do(ctx, func(ctx context.Context, c *keyservice.Client) error {
		var err error
		key, err = c.GetDataKey(ctx, kms.JoinConfigKeyID, 32)
		return err
	}); err != nil {
		return nil, fmt.Errorf("getting the join configuration's key: %w", err)
	}
	return key, nil
}

// ownKeyServices are the key services of endpoints as the join service trusts them without its configuration
// ([ownKeyServiceValidator]), over mutual aTLS with issuer.
func ownKeyServices(ctx context.Context, endpoints func(ctx context.Context) ([]string, error), issuer attestation.Issuer, akRoots []*x509.Certificate, roles Roles) (*keyservice.Pool, error) {
	v, err := ownKeyServiceValidator(ctx, issuer, akRoots, roles)
	if err != nil {
		return nil, err
	}
	return &keyservice.Pool{Endpoints: endpoints, Issuer: issuer, Validator: v}, nil
}

// ownKeyServiceValidator trusts a key service on a vTPM that akRoots certified for a control-plane node, with
// this node's own boot measurements and cluster ID, as issuer quotes them.
func ownKeyServiceValidator(ctx context.Context, issuer attestation.Issuer, akRoots []*x509.Certificate, roles Roles) (attestation.Validator, error) {
	own, err := OwnMemberPolicy(ctx, issuer)
	if err != nil {
		return nil, err
	}
	v, err := vtpm.NewValidatorFor(issuer.Variant(), akRoots, own, nil)
	if err != nil {
		return nil, err
	}
	return keyservice.ControlPlaneOnly(v, roles.IsControlPlane), nil
}

// KeyServicePolicy returns the source of the measurement policy update in force ([Config.FollowPolicy]): asked
// at each call of whichever key service answers on the policy port at endpoints
// (keyservice.ControlPlanePolicyAddrs), trusted as [FetchConfigKey] trusts it; issuer only quotes this node's
// own measurements for that. On the policy port only the key service attests itself, so it answers also once
// the policy in force no longer accepts this node's own image (the operator's CLI removed the image the
// cluster runs from), when it refuses this node at a mutual handshake: the join service then enforces the new
// policy at joins, and the continuous attestation fails every node of the removed image, this one included.
//
// The answer counts as the policy the operator's CLI authored although the join service cannot check its MAC
// (the key is derived from the master secret, which the join service does not hold): the key service proved
// in the handshake, bound to the channel, that it runs this node's own image on a control-plane node of this
// cluster, and that code puts an update in force, and answers it, only after its MAC and cluster ID verified
// under the master secret, which it holds. The source checks the update's cluster ID against the join
// configuration's itself ([Config.Effective]), and never goes back to an update older than one a key service
// answered before: a key service that lags behind (it missed an update while it was down) does not roll the
// join service back.
//
// close closes the connections.
func KeyServicePolicy(ctx context.Context, endpoints func(ctx context.Context) ([]string, error), issuer attestation.Issuer, akRoots []*x509.Certificate, roles Roles) (src PolicySource, close func() error, err error) {
	v, err := ownKeyServiceValidator(ctx, issuer, akRoots, roles)
	if err != nil {
		return nil, nil, err
	}
	p := keyservice.NewPolicyPool(endpoints, v)
	var mu sync.Mutex
	var newest *policyupdate.Update
	return func(ctx context.Context) (*policyupdate.Update, error) {
		var u *policyupdate.Update
		err := p.Do(ctx, func(ctx context.Context, c *keyservice.Client) error {
			var err error
			u, _, err = c.GetMeasurementPolicy(ctx)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("asking the key service for the measurement policy in force: %w", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if u == nil {
			if newest != nil {
				return newest, nil // a key service without an update lags behind the one that answered newest
			}
			return nil, nil
		}
		take, err := policyupdate.Supersedes(newest, u)
		switch {
		case errors.Is(err, policyupdate.ErrStale):
			return newest, nil
		case err != nil:
			return nil, fmt.Errorf("the key services disagree on the measurement policy in force: %w", err)
		case take:
			newest = u
		}
		return newest, nil
	}, p.Close, nil
}

// OwnMemberPolicy is the policy of this node as its own vTPM quotes it: the PCRs of the firmware, the node
// image and the boot parameters, and the cluster-ID PCR, which must hold a cluster ID. Every control-plane node
// of a cluster booted the same image and belongs to the same cluster, so the key service's node matches it.
// The quote comes from this node's own attestation agent and is not validated: it is the node's own.
func OwnMemberPolicy(ctx context.Context, issuer attestation.Issuer) (measurements.M, error) {
	nonce := make([]byte, attestation.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	raw, err := issuer.Issue(ctx, nonce, nil)
	if err != nil {
		return nil, fmt.Errorf("quoting this node's own PCRs: %w", err)
	}
	doc, err := attestation.ParseDocument(raw)
	if err != nil {
		return nil, fmt.Errorf("this node's own evidence: %w", err)
	}
	if doc.TPM == nil || len(doc.TPM.Quotes) == 0 {
		return nil, errors.New("this node's own evidence holds no vTPM quote")
	}
	pcrs := doc.TPM.Quotes[0].PCRs
	m, err := measurements.FromPCRs(func(idx uint32) []byte { return pcrs[idx] }, append(vtpm.BootPCRs(issuer.Variant()), measurements.PCRClusterID)...)
	if err != nil {
		return nil, fmt.Errorf("this node's own quote: %w", err)
	}
	if m[measurements.PCRClusterID].Expected == (measurements.Digest{}) {
		return nil, fmt.Errorf("this node has measured no cluster ID into PCR %d: it is no member of a cluster", measurements.PCRClusterID)
	}
	return m, nil
}
