package akca

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
)

// Enroller is the CA as a TPM sees it: in process, or a client of the provider's endpoint.
type Enroller interface {
	Challenge(ctx context.Context, req EnrollRequest) (*Challenge, error)
	Complete(ctx context.Context, id string, secret []byte) ([]byte, error)
}

// Enroll proves to ca that the TPM behind rw holds both its certified endorsement key and its attestation
// key, and returns the DER certificate ca issues for the attestation key.
func Enroll(ctx context.Context, rw io.ReadWriter, name string, alg vtpm.KeyAlgorithm, ca Enroller) ([]byte, error) {
	ek, err := endorsementKey(rw)
	if err != nil {
		return nil, err
	}
	defer ek.Close()
	ak, err := vtpm.CreateAK(rw, alg)
	if err != nil {
		return nil, err
	}
	defer ak.Close()
	akPub, err := ak.PublicArea().Encode()
	if err != nil {
		return nil, fmt.Errorf("encoding attestation key public area: %w", err)
	}
	ch, err := ca.Challenge(ctx, EnrollRequest{Name: name, EKCert: ek.CertDERBytes(), AKPublic: akPub})
	if err != nil {
		return nil, fmt.Errorf("requesting enrollment challenge: %w", err)
	}
	secret, err := activateCredential(rw, ak, ek, ch)
	if err != nil {
		return nil, err
	}
	cert, err := ca.Complete(ctx, ch.ID, secret)
	if err != nil {
		return nil, fmt.Errorf("completing enrollment: %w", err)
	}
	return cert, nil
}

// endorsementKey loads the EK that matches the TPM's EK certificate (RSA first, then ECC).
func endorsementKey(rw io.ReadWriter) (*client.Key, error) {
	var errs []error
	for _, load := range []func(io.ReadWriter) (*client.Key, error){client.EndorsementKeyRSA, client.EndorsementKeyECC} {
		ek, err := load(rw)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// The client library has already checked that a certificate it found certifies this EK.
		if ek.Cert() == nil {
			ek.Close()
			continue
		}
		return ek, nil
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("loading endorsement key: %w", errors.Join(errs...))
	}
	return nil, errors.New("the TPM has no endorsement key certificate (NV index 0x01c00002 or 0x01c0000a); it was not provisioned by a manufacturer the CA knows")
}

func activateCredential(rw io.ReadWriter, ak, ek *client.Key, ch *Challenge) ([]byte, error) {
	if len(ch.Credential) < 2 || len(ch.Secret) < 2 {
		return nil, errors.New("malformed enrollment challenge")
	}
	sess, _, err := tpm2.StartAuthSession(rw, tpm2.HandleNull, tpm2.HandleNull, make([]byte, 16), nil,
		tpm2.SessionPolicy, tpm2.AlgNull, tpm2.AlgSHA256)
	if err != nil {
		return nil, fmt.Errorf("starting policy session: %w", err)
	}
	defer tpm2.FlushContext(rw, sess)
	// The EK's policy requires the endorsement hierarchy's authorization (empty here).
	if _, _, err := tpm2.PolicySecret(rw, tpm2.HandleEndorsement,
		tpm2.AuthCommand{Session: tpm2.HandlePasswordSession, Attributes: tpm2.AttrContinueSession},
		sess, nil, nil, nil, 0); err != nil {
		return nil, fmt.Errorf("satisfying endorsement key policy: %w", err)
	}
	secret, err := tpm2.ActivateCredentialUsingAuth(rw, []tpm2.AuthCommand{
		{Session: tpm2.HandlePasswordSession, Attributes: tpm2.AttrContinueSession},
		{Session: sess, Attributes: tpm2.AttrContinueSession},
	}, ak.Handle(), ek.Handle(), ch.Credential[2:], ch.Secret[2:])
	if err != nil {
		return nil, fmt.Errorf("activating credential: %w", err)
	}
	return secret, nil
}
