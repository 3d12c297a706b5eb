// Package akca certifies TPM attestation keys, the role a cloud provider plays for its vTPMs.
//
// A TPM enrolls in two steps. First it sends its endorsement key (EK) certificate and the public area of its
// attestation key (AK). The CA checks that the EK certificate chains to a trusted TPM manufacturer root and
// that the AK is a restricted signing key that cannot leave the TPM, then encrypts a random secret to the EK,
// bound to the AK's name (TPM2_MakeCredential). Only the TPM that holds both keys can recover the secret
// (TPM2_ActivateCredential). Second, the TPM returns the secret, and the CA issues an X.509 certificate for the
// AK. Validators then trust the AK only through that certificate, never because evidence carries a key.
package akca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"time"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/legacy/tpm2/credactivation"

	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
)

// OIDEKCertificate is the extended key usage of TPM endorsement key certificates (tcg-kp-EKCertificate).
var OIDEKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 1}

// OIDEKPublicKeyHash is the extension of an AK certificate that records the SHA-256 of the endorsement key's
// SubjectPublicKeyInfo, so an operator can trace an AK to its TPM.
var OIDEKPublicKeyHash = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 32473, 1, 2, 1}

const (
	challengeTTL       = 5 * time.Minute
	maxPendingRequests = 4096
	secretSize         = 32
	// DefaultValidity is how long an issued AK certificate is valid.
	DefaultValidity = 365 * 24 * time.Hour
)

// EnrollRequest is the first message of an enrollment.
type EnrollRequest struct {
	// Name identifies the node; it becomes the certificate's common name.
	Name string `json:"name"`
	// EKCert is the DER endorsement key certificate read from the TPM.
	EKCert []byte `json:"ekCert"`
	// AKPublic is the TPMT_PUBLIC area of the attestation key.
	AKPublic []byte `json:"akPublic"`
}

// Challenge is the CA's credential-activation challenge.
type Challenge struct {
	ID string `json:"id"`
	// Credential is the TPM2B_ID_OBJECT and Secret the TPM2B_ENCRYPTED_SECRET for TPM2_ActivateCredential.
	Credential []byte `json:"credential"`
	Secret     []byte `json:"secret"`
}

// CA certifies attestation keys.
type CA struct {
	key      crypto.Signer
	cert     *x509.Certificate
	ekRoots  *x509.CertPool
	validity time.Duration
	now      func() time.Time

	mu      sync.Mutex
	pending map[string]pendingRequest
}

type pendingRequest struct {
	name     string
	secret   []byte
	akPub    crypto.PublicKey
	ekHash   [32]byte
	deadline time.Time
}

// New returns a CA that signs with key and cert and trusts EK certificates chaining to ekRoots.
func New(key crypto.Signer, cert *x509.Certificate, ekRoots []*x509.Certificate) (*CA, error) {
	if len(ekRoots) == 0 {
		return nil, errors.New("no TPM manufacturer root configured; the CA would not know which TPMs to trust")
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("certificate %q is not a CA certificate", cert.Subject.CommonName)
	}
	pool := x509.NewCertPool()
	for _, r := range ekRoots {
		pool.AddCert(r)
	}
	return &CA{key: key, cert: cert, ekRoots: pool, validity: DefaultValidity, now: time.Now, pending: map[string]pendingRequest{}}, nil
}

// Certificate returns the CA certificate verifiers pin.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// Challenge checks an enrollment request and returns a credential-activation challenge.
func (c *CA) Challenge(_ context.Context, req EnrollRequest) (*Challenge, error) {
	if req.Name == "" || len(req.Name) > 253 {
		return nil, errors.New("enrollment request: node name must have 1 to 253 characters")
	}
	ekCert, err := c.verifyEKCert(req.EKCert)
	if err != nil {
		return nil, err
	}
	akPub, akName, err := checkAKPublic(req.AKPublic)
	if err != nil {
		return nil, err
	}
	secret := make([]byte, secretSize)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	symBlockSize := 16 // AES-128, the EK templates' symmetric scheme
	cred, encSecret, err := credactivation.Generate(akName.Digest, ekCert.PublicKey, symBlockSize, secret)
	if err != nil {
		return nil, fmt.Errorf("creating credential for the endorsement key: %w", err)
	}
	idBytes := make([]byte, 16)
	if _, err := rand.Read(idBytes); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(idBytes)

	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked()
	if len(c.pending) >= maxPendingRequests {
		return nil, errors.New("too many enrollments in progress; retry later")
	}
	c.pending[id] = pendingRequest{
		name:     req.Name,
		secret:   secret,
		akPub:    akPub,
		ekHash:   sha256.Sum256(ekCert.RawSubjectPublicKeyInfo),
		deadline: c.now().Add(challengeTTL),
	}
	return &Challenge{ID: id, Credential: cred, Secret: encSecret}, nil
}

// Complete checks the secret the TPM recovered and returns the DER AK certificate. A challenge can be answered
// once; a wrong answer consumes it.
func (c *CA) Complete(_ context.Context, id string, secret []byte) ([]byte, error) {
	c.mu.Lock()
	c.expireLocked()
	p, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if !ok {
		return nil, errors.New("unknown or expired enrollment challenge; start the enrollment again")
	}
	if subtle.ConstantTimeCompare(p.secret, secret) != 1 {
		return nil, errors.New("credential activation failed: the attestation key and the endorsement key are not in the same TPM")
	}
	return c.issue(p)
}

func (c *CA) expireLocked() {
	now := c.now()
	for id, p := range c.pending {
		if now.After(p.deadline) {
			delete(c.pending, id)
		}
	}
}

func (c *CA) issue(p pendingRequest) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	ekExt, err := asn1.Marshal(p.ekHash[:])
	if err != nil {
		return nil, err
	}
	now := c.now()
	tmpl := &x509.Certificate{
		SerialNumber:       serial,
		Subject:            pkix.Name{CommonName: p.name},
		NotBefore:          now.Add(-5 * time.Minute),
		NotAfter:           now.Add(c.validity),
		KeyUsage:           x509.KeyUsageDigitalSignature,
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{vtpm.OIDAKCertificate},
		ExtraExtensions:    []pkix.Extension{{Id: OIDEKPublicKeyHash, Value: ekExt}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, p.akPub, c.key)
	if err != nil {
		return nil, fmt.Errorf("signing attestation key certificate: %w", err)
	}
	return der, nil
}

func (c *CA) verifyEKCert(der []byte) (*x509.Certificate, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing endorsement key certificate: %w", err)
	}
	if cert.IsCA {
		return nil, fmt.Errorf("certificate %q is a CA certificate, not a TPM's endorsement key certificate", cert.Subject.CommonName)
	}
	// EK certificates put the TPM's identity in a critical subject alternative name of type directoryName
	// and often carry a critical basic-constraints or subject-directory-attributes extension. Accept
	// exactly those TCG-defined critical extensions; anything else stays unhandled and fails verification.
	cert.UnhandledCriticalExtensions = slices.DeleteFunc(cert.UnhandledCriticalExtensions, func(id asn1.ObjectIdentifier) bool {
		return id.Equal(oidSubjectAltName) || id.Equal(oidSubjectDirectoryAttributes)
	})
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:       c.ekRoots,
		CurrentTime: c.now(),
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("endorsement key certificate (issuer %q) is not from a trusted TPM manufacturer: %w", cert.Issuer.CommonName, err)
	}
	switch pub := cert.PublicKey.(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() != 2048 {
			return nil, fmt.Errorf("endorsement key is RSA-%d, want RSA-2048", pub.N.BitLen())
		}
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			return nil, fmt.Errorf("endorsement key uses curve %s, want P-256", pub.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("endorsement key of type %T is not supported", cert.PublicKey)
	}
	return cert, nil
}

var (
	oidSubjectAltName             = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidSubjectDirectoryAttributes = asn1.ObjectIdentifier{2, 5, 29, 9}
)

// requiredAKAttributes are the attributes of a key that was created inside the TPM, never leaves it, and signs
// only TPM-generated data (restricted).
const requiredAKAttributes = tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin |
	tpm2.FlagRestricted | tpm2.FlagSign

func checkAKPublic(raw []byte) (crypto.PublicKey, tpm2.Name, error) {
	pub, err := tpm2.DecodePublic(raw)
	if err != nil {
		return nil, tpm2.Name{}, fmt.Errorf("parsing attestation key public area: %w", err)
	}
	if pub.NameAlg != tpm2.AlgSHA256 {
		return nil, tpm2.Name{}, fmt.Errorf("attestation key name algorithm %v, want SHA-256", pub.NameAlg)
	}
	if pub.Attributes&requiredAKAttributes != requiredAKAttributes {
		return nil, tpm2.Name{}, fmt.Errorf("attestation key attributes %#x lack fixedTPM, fixedParent, sensitiveDataOrigin, restricted or sign", uint32(pub.Attributes))
	}
	if pub.Attributes&tpm2.FlagDecrypt != 0 {
		return nil, tpm2.Name{}, errors.New("attestation key must not be a decryption key")
	}
	key, err := pub.Key()
	if err != nil {
		return nil, tpm2.Name{}, fmt.Errorf("attestation key public area: %w", err)
	}
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, tpm2.Name{}, errors.New("attestation key must use curve P-256")
		}
	case *rsa.PublicKey:
		if k.N.BitLen() != 2048 {
			return nil, tpm2.Name{}, fmt.Errorf("attestation key is RSA-%d, want RSA-2048", k.N.BitLen())
		}
	default:
		return nil, tpm2.Name{}, fmt.Errorf("attestation key of type %T is not supported", key)
	}
	name, err := pub.Name()
	if err != nil {
		return nil, tpm2.Name{}, fmt.Errorf("computing attestation key name: %w", err)
	}
	return key, name, nil
}
