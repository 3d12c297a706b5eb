package signed

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// EncryptedKeyPEMType is the PEM type of an encrypted signing key: sigstore's (and cosign's) format, a PKCS #8
// key sealed with NaCl secretbox under a key derived from the passphrase with scrypt
// (github.com/secure-systems-lab/go-securesystemslib/encrypted).
const EncryptedKeyPEMType = string(cryptoutils.EncryptedSigstorePrivateKeyPEMType)

// ErrWrongPassphrase is returned by [DecryptPrivateKeyPEM] when the passphrase does not open the key.
var ErrWrongPassphrase = errors.New("the passphrase does not decrypt the key")

// EncryptPrivateKeyPEM seals an ECDSA P-256 key under passphrase, as sigstore's encrypted PEM.
func EncryptPrivateKeyPEM(priv *ecdsa.PrivateKey, passphrase []byte) ([]byte, error) {
	if len(passphrase) == 0 {
		return nil, errors.New("an empty passphrase does not protect a key")
	}
	if priv == nil || priv.Curve != elliptic.P256() {
		return nil, errors.New("the key to encrypt is not an ECDSA P-256 key")
	}
	der, err := cryptoutils.MarshalPrivateKeyToEncryptedDER(priv, cryptoutils.StaticPasswordFunc(passphrase))
	if err != nil {
		return nil, fmt.Errorf("encrypting the private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: EncryptedKeyPEMType, Bytes: der}), nil
}

// DecryptPrivateKeyPEM opens a key written by [EncryptPrivateKeyPEM]. A key that is not encrypted is refused:
// a release key must never rest in the clear.
func DecryptPrivateKeyPEM(raw, passphrase []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != EncryptedKeyPEMType {
		return nil, fmt.Errorf("not an encrypted key (a PEM block %q)", EncryptedKeyPEMType)
	}
	if len(passphrase) == 0 {
		return nil, errors.New("no passphrase to decrypt the key with")
	}
	k, err := cryptoutils.UnmarshalPEMToPrivateKey(raw, cryptoutils.StaticPasswordFunc(passphrase))
	if err != nil {
		// secretbox cannot tell a wrong passphrase from a damaged file.
		return nil, fmt.Errorf("%w (or the file is damaged): %v", ErrWrongPassphrase, err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("the decrypted key is not an ECDSA P-256 key")
	}
	return ec, nil
}
