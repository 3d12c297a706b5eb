package keyservice

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/retry"
)

// Options configure [Run].
type Options struct {
	// Listener is where the key service serves. Callers that connect before it has the master secret wait.
	Listener net.Listener
	// Listen, if Listener is nil, opens the listener once the key service has the master secret: until then
	// callers find no key service there, and try another.
	Listen func() (net.Listener, error)
	// SecretSocket is where the node's bootstrapper hands over the master secret ([SecretSocket]).
	SecretSocket string
	// Issuer attests the key service (the node's attestation agent).
	Issuer attestation.Issuer
	// AKRoots returns the roots of the callers' attestation keys (the provider's AK CA); required for a cluster
	// of a variant with a vTPM, unused for one without (qemu-sev-snp).
	AKRoots func(ctx context.Context) ([]*x509.Certificate, error)
	// Validators are the trust anchors of the callers' hardware evidence on a cluster without a vTPM (the zero
	// value: the AMD roots embedded in the binary; only tests set others).
	Validators validators.Options
	// Allowed decides by a caller's attested name whether it may get keys at all (control-plane nodes).
	Allowed func(ctx context.Context, name string) (bool, error)
	// DiskBindings is the record of which node each state disk belongs to, which every key service of the
	// cluster shares ([APIDiskBindings]).
	DiskBindings DiskBinder
	// LegacyDiskBindings, if set, is a file of bindings from before the shared record
	// ([LegacyDiskBindingsFile]), moved into DiskBindings when the key service starts.
	LegacyDiskBindings string
	// Quarantined, if set, tells whether a node is quarantined; such a node gets no key
	// ([Server.RefuseQuarantined]).
	Quarantined func(ctx context.Context, node string) (bool, error)
	// PolicyFile is where the key service keeps the measurement policy update in force, on the node's
	// encrypted state disk ([PolicyFile]). Required: a key service that kept its policy in memory only would
	// fall back to the init's measurements at its next start, and admit an image the operator removed.
	PolicyFile string
	// PolicyListen, if set, opens the policy port's listener ([PolicyPort]) once the key service has the
	// master secret: there anyone reads the measurement policy and sends updates, which count by their MAC.
	PolicyListen func() (net.Listener, error)
	// Log receives the service's log and its audit lines.
	Log *slog.Logger
}

// Run is the key service as it runs on a control-plane node: it waits until the node's bootstrapper hands it
// the master secret, then serves keys over mutual aTLS to callers that prove they are control-plane nodes of
// this cluster (the cluster's measurements and, in PCR 15, its cluster ID; on qemu-sev-snp the cluster's
// attestation policy and the cluster ID bound in their reports), until ctx ends. It hands the
// master secret itself to the same callers (control-plane nodes that joined), and to no one else.
func Run(ctx context.Context, o Options) error {
	if (o.Listener == nil && o.Listen == nil) || o.SecretSocket == "" || o.Issuer == nil || o.Allowed == nil || o.DiskBindings == nil || o.Log == nil {
		return errors.New("the key service needs a listener, the secret socket, an issuer, a caller restriction, a disk bindings record and a log")
	}
	if o.PolicyFile == "" {
		return errors.New("the key service needs a policy file on the node's encrypted state disk (--policy-file): kept in memory only, the measurement policy in force would be lost at the next start and a removed image admitted again")
	}
	disks := o.DiskBindings
	secret, err := waitForSecret(ctx, o.SecretSocket, o.Log)
	if err != nil {
		return err
	}
	d, err := kms.NewDeriver(secret.MasterSecret)
	if err != nil {
		return err
	}
	// The record lives in the API, which may come back after this service (a recovery): wait for it.
	// A disk bound to another node is final; anything else (the API not answering yet) is tried again.
	var bound error
	untilBound := func(what string, fn func() error) error {
		return retry.Do(ctx, o.Log, what, func() error {
			if err := fn(); errors.Is(err, ErrDiskBound) {
				bound = err
			} else if err != nil {
				return err
			}
			return nil
		})
	}
	if o.LegacyDiskBindings != "" {
		if err := untilBound("moving the legacy disk bindings into the shared record", func() error {
			return MigrateDiskBindingsFile(ctx, o.LegacyDiskBindings, disks, o.Log)
		}); err != nil || bound != nil {
			return errors.Join(err, bound)
		}
	}
	if secret.DiskUUID != "" {
		if err := untilBound("binding this node's own state disk", func() error {
			return disks.Bind(ctx, secret.DiskUUID, secret.Node)
		}); err != nil || bound != nil {
			return fmt.Errorf("binding the state disk of this node (%s): %w", secret.Node, errors.Join(err, bound))
		}
	}
	policy, err := callerPolicy(ctx, o, d, secret)
	if err != nil {
		return err
	}
	if current, _ := policy.Current(); len(secret.Attestation) == 0 {
		o.Log.Info("measurement policy in force", "policy", current.String(), "sets", len(policy.Sets()))
	}
	v := policy.Validator()
	ks := New(d, o.Log)
	ks.EnforcePolicy(policy)
	ks.RestrictTo(o.Allowed)
	ks.BindDisks(disks)
	ks.ShareSecret(secret)
	if o.Quarantined != nil {
		ks.RefuseQuarantined(o.Quarantined)
	}
	srv, err := NewGRPCServer(ks, o.Issuer, []attestation.Validator{v})
	if err != nil {
		return err
	}
	if o.Listener == nil {
		if o.Listener, err = o.Listen(); err != nil {
			return err
		}
	}
	stop := context.AfterFunc(ctx, srv.GracefulStop)
	defer stop()
	if o.PolicyListen != nil {
		psrv, err := NewPolicyServer(policy, o.Issuer)
		if err != nil {
			return err
		}
		pl, err := o.PolicyListen()
		if err != nil {
			return err
		}
		stopPolicy := context.AfterFunc(ctx, psrv.GracefulStop)
		defer stopPolicy()
		defer psrv.Stop()
		go func() {
			if err := psrv.Serve(pl); err != nil {
				o.Log.Error("the key service's policy port stopped", "error", err)
			}
		}()
		o.Log.Info("key service's policy port serving (server-side aTLS; updates count by their MAC and epoch)", "address", pl.Addr().String())
	}
	o.Log.Info("key service serving over mutual aTLS, for control-plane members only", "address", o.Listener.Addr().String(), "clusterID", fmt.Sprintf("%x", secret.ClusterID))
	return srv.Serve(o.Listener)
}

// callerPolicy is the policy the key service's callers must meet: members of the cluster of secret, with one
// of the measurement sets in force (the init's, or those of the latest update the key service accepted, kept
// in its policy file, or got with the master secret) on a vTPM that the provider's AK CA certified; on a
// cluster without a vTPM (secret.Attestation, qemu-sev-snp), members of the cluster under its attestation
// policy, which no update changes.
func callerPolicy(ctx context.Context, o Options, d *kms.Deriver, secret *Secret) (*Policy, error) {
	if len(secret.Attestation) > 0 {
		att, err := secret.AttestationPolicy()
		if err != nil {
			return nil, err
		}
		if v := o.Issuer.Variant(); v.Name != att.Variant {
			return nil, fmt.Errorf("the cluster's attestation policy is of %s, but this key service attests as %s", att.Variant, v)
		}
		v, err := MemberValidator(att, secret.ClusterID, o.Validators)
		if err != nil {
			return nil, fmt.Errorf("the validator of the key service's callers: %w", err)
		}
		o.Log.Info("attestation policy in force: members of this cluster under its attestation policy; measurement policy updates are refused", "variant", att.Variant)
		return NewFixedPolicy(d, secret.ClusterID, v, o.Log)
	}
	if o.AKRoots == nil {
		return nil, errors.New("the key service of a cluster with a vTPM needs the roots of the callers' attestation keys")
	}
	var roots []*x509.Certificate
	if err := retry.Do(ctx, o.Log, "fetching the attestation-key roots", func() error {
		var err error
		roots, err = o.AKRoots(ctx)
		return err
	}); err != nil {
		return nil, err
	}
	policy, err := NewPolicy(d, secret.ClusterID, secret.Measurements, o.PolicyFile, MemberValidators(o.Issuer.Variant(), roots, secret.ClusterID, o.Log), o.Log)
	if err != nil {
		return nil, err
	}
	if len(secret.PolicyUpdate) > 0 {
		u, changed, err := policy.Apply(secret.PolicyUpdate)
		switch {
		case errors.Is(err, policyupdate.ErrStale), errors.Is(err, policyupdate.ErrConflict):
			o.Log.Warn("the measurement policy update handed over with the master secret is not newer than the one in force; keeping the one in force", "reason", err.Error())
		case err != nil:
			return nil, fmt.Errorf("the measurement policy update handed over with the master secret: %w", err)
		case changed:
			o.Log.Info("measurement policy update in force, handed over with the master secret", "epoch", u.Epoch, "policy", u.String())
		}
	}
	return policy, nil
}

// waitForSecret asks the bootstrapper for the master secret until it has one: after a reboot the kubelet may
// start this service before 'constellation recover' has brought the secret back.
func waitForSecret(ctx context.Context, socket string, log *slog.Logger) (*Secret, error) {
	var s *Secret
	err := retry.Do(ctx, log, "waiting for the master secret from this node's bootstrapper", func() error {
		var err error
		s, err = FetchSecret(ctx, socket)
		return err
	})
	return s, err
}
