package signed

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/constellation-dev/constellation/internal/strictjson"
)

// rootFile is the JSON form of a [Root].
type rootFile struct {
	Log struct {
		Origin    string `json:"origin"`
		PublicKey string `json:"publicKey"`
	} `json:"log"`
	Keys []struct {
		Name        string `json:"name"`
		Development bool   `json:"development,omitempty"`
		PublicKey   string `json:"publicKey"`
	} `json:"keys"`
}

// MarshalJSON writes the root with PEM public keys.
func (r Root) MarshalJSON() ([]byte, error) {
	var f rootFile
	f.Log.Origin = r.Log.Origin
	var err error
	if f.Log.PublicKey, err = PublicKeyPEM(r.Log.PublicKey); err != nil {
		return nil, err
	}
	for _, k := range r.Keys {
		p, err := PublicKeyPEM(k.PublicKey)
		if err != nil {
			return nil, err
		}
		f.Keys = append(f.Keys, struct {
			Name        string `json:"name"`
			Development bool   `json:"development,omitempty"`
			PublicKey   string `json:"publicKey"`
		}{k.Name, k.Development, p})
	}
	return json.MarshalIndent(f, "", "  ")
}

// ParseRoot reads a root written by [Root.MarshalJSON], strictly.
func ParseRoot(raw []byte) (Root, error) {
	var f rootFile
	if err := strictjson.Decode(raw, &f, MaxBundleSize); err != nil {
		return Root{}, fmt.Errorf("decoding the trusted root: %w", err)
	}
	logKey, err := ParsePublicKeyPEM([]byte(f.Log.PublicKey))
	if err != nil {
		return Root{}, fmt.Errorf("the trusted root's log key: %w", err)
	}
	r := Root{Log: Log{Origin: f.Log.Origin, PublicKey: logKey}}
	for _, k := range f.Keys {
		pub, err := ParsePublicKeyPEM([]byte(k.PublicKey))
		if err != nil {
			return Root{}, fmt.Errorf("the trusted root's key %q: %w", k.Name, err)
		}
		if k.Name == "" {
			return Root{}, errors.New("the trusted root holds a key without a name")
		}
		r.Keys = append(r.Keys, Key{Name: k.Name, Development: k.Development, PublicKey: pub})
	}
	if _, _, err := r.material(); err != nil {
		return Root{}, err
	}
	return r, nil
}

// PublicKeyPEM encodes a P-256 public key as PKIX PEM.
func PublicKeyPEM(pub *ecdsa.PublicKey) (string, error) {
	if pub == nil {
		return "", errors.New("no public key")
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encoding the public key: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}

// ParsePublicKeyPEM decodes a PKIX PEM ECDSA P-256 public key.
func ParsePublicKeyPEM(raw []byte) (*ecdsa.PublicKey, error) {
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PEM public key")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing the public key: %w", err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("the public key is not an ECDSA P-256 key")
	}
	return ec, nil
}

// PrivateKeyPEM encodes a private key as PKCS #8 PEM, the form the log server reads its key in.
func PrivateKeyPEM(priv *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encoding the private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKeyPEM decodes a PKCS #8 PEM ECDSA P-256 private key.
func ParsePrivateKeyPEM(raw []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM PKCS #8 private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing the private key: %w", err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("the private key is not an ECDSA P-256 key")
	}
	return ec, nil
}
