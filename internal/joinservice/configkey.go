package joinservice

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"

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

// ownKeyServices are the key services of endpoints as the join service trusts them without its configuration:
// on a vTPM that akRoots certified for a control-plane node, with this node's own boot measurements and cluster
// ID.
func ownKeyServices(ctx context.Context, endpoints func(ctx context.Context) ([]string, error), issuer attestation.Issuer, akRoots []*x509.Certificate, roles Roles) (*keyservice.Pool, error) {
	own, err := OwnMemberPolicy(ctx, issuer)
	if err != nil {
		return nil, err
	}
	v, err := vtpm.NewValidatorFor(issuer.Variant(), akRoots, own, nil)
	if err != nil {
		return nil, err
	}
	return &keyservice.Pool{Endpoints: endpoints, Issuer: issuer, Validator: keyservice.ControlPlaneOnly(v, roles.IsControlPlane)}, nil
}

// KeyServicePolicy returns the source of the measurement policy update in force ([Config.FollowPolicy]): asked
// at each call of whichever key service of endpoints answers, trusted as [FetchConfigKey] trusts it. The key
// service keeps the update on its node's encrypted state disk and accepts only a newer one under the master
// secret's MAC, so what it answers is the latest update the operator's CLI sent, whatever the ConfigMap holds.
// close closes the connections.
func KeyServicePolicy(ctx context.Context, endpoints func(ctx context.Context) ([]string, error), issuer attestation.Issuer, akRoots []*x509.Certificate, roles Roles) (src PolicySource, close func() error, err error) {
	p, err := ownKeyServices(ctx, endpoints, issuer, akRoots, roles)
	if err != nil {
		return nil, nil, err
	}
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
		return u, nil
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
