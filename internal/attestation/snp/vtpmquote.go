package snp

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
)

// The TPM part of vTPM-combined evidence: one quote of the SHA-256 bank, PCRs 0-23, signed by an attestation
// key that the hardware report binds.

// tpmAlgSHA256 is TPM_ALG_SHA256 (the tests build quotes with it).
const tpmAlgSHA256 = 0x000b

// parseAttestationKey parses the attestation key of TPM evidence: a DER SubjectPublicKeyInfo, in its
// canonical encoding (the binding commits to the key's encoding), of an ECDSA P-256 or P-384 key or an RSA
// key of 2048 to 4096 bits.
func parseAttestationKey(der []byte) (crypto.PublicKey, error) {
	if len(der) == 0 {
		return nil, errors.New("the TPM part has no attestation key (akPublic)")
	}
	key, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the attestation key: %w", err)
	}
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("attestation key on curve %s, want P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 4096 {
			return nil, fmt.Errorf("RSA attestation key of %d bits, want 2048 to 4096", n)
		}
	default:
		return nil, fmt.Errorf("attestation key of type %T, want ECDSA or RSA", key)
	}
	again, err := x509.MarshalPKIXPublicKey(key)
	if err != nil || !bytes.Equal(again, der) {
		return nil, errors.New("the attestation key is not in canonical DER encoding")
	}
	return key, nil
}

// verifyVTPMQuote verifies the TPM part of evidence whose attestation key ak a verified hardware report
// binds: the same checks as for mini-vtpm evidence (vtpm.VerifyQuote), with the key trusted through the report
// instead of a certificate.
func verifyVTPMQuote(variant attestation.Variant, ev *attestation.TPMEvidence, ak crypto.PublicKey, nonce, userData []byte, policy measurements.M, log *slog.Logger) error {
	if err := vtpm.VerifyQuote(variant, ev, ak, nonce, userData, policy, log); err != nil {
		return fmt.Errorf("vTPM (attestation key bound by the hardware report): %w", err)
	}
	return nil
}
