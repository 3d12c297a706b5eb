package joinservice

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// The registry mirrors' credentials are a secret, so they are not in the join configuration (a ConfigMap, which
// its MAC protects from edits, not from readers): they are in a Secret of their own, which only the join service
// mounts, with a MAC of their own under the same key, and reach a joining node only inside the join service's
// attested answer.
const (
	// CredentialsSecretName is the Secret in kube-system with the mirrors' credentials.
	CredentialsSecretName = "join-registry-credentials"
	// CredentialsDir is where the join service's container sees that Secret.
	CredentialsDir = "/etc/constellation/join-credentials"
	// CredentialsFile holds the credentials (see registrymirror.MarshalCredentials); CredentialsMACFile the hex
	// HMAC-SHA256 of them under the join-config key ([CredentialsMAC]).
	CredentialsFile    = "registry-credentials.json"
	CredentialsMACFile = "registry-credentials.mac"
)

// CredentialsMAC is the MAC of the marshalled credentials under key (kms.Deriver.JoinConfigKey), under a label
// of its own, so that it is never a join configuration's MAC.
func CredentialsMAC(key, raw []byte) []byte {
	m := hmac.New(sha256.New, key)
	io.WriteString(m, "constellation registry credentials v1\x00")
	m.Write(raw)
	return m.Sum(nil)
}

// CredentialsManifest returns the Secret with the mirrors' credentials (validated against the mirror list, and
// authenticated under macKey), as a JSON list for `kubectl apply`. It is made, and applied, also without
// credentials: then it holds none, and an earlier Secret's credentials are gone.
func CredentialsManifest(macKey []byte, ms []registrymirror.Mirror, cs []registrymirror.Credentials) ([]byte, error) {
	if len(macKey) != 32 {
		return nil, errors.New("the registry credentials need the 32-byte key of their MAC")
	}
	raw, err := registrymirror.MarshalCredentials(ms, cs)
	if err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	return kubeapi.List(map[string]any{
		"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
		"metadata": kubeapi.Meta(Name, CredentialsSecretName),
		"stringData": map[string]string{
			CredentialsFile:    string(raw),
			CredentialsMACFile: hex.EncodeToString(CredentialsMAC(macKey, raw)),
		},
	})
}

// ErrCredentialsNotAuthentic says that the credentials' MAC does not verify: somebody without the master secret
// changed the Secret.
var ErrCredentialsNotAuthentic = errors.New("the registry credentials' MAC does not verify under the cluster's join-config key: the Secret was changed by someone without the master secret")

// readCredentials reads the mirrors' credentials from the mounted Secret in dir: none if dir is empty or the
// Secret holds none (a service without it). They count only if their MAC verifies under macKey and they are
// valid for the mirror list of the (authenticated) join configuration. Errors never hold a credential.
func readCredentials(dir string, macKey []byte, ms []registrymirror.Mirror) ([]registrymirror.Credentials, error) {
	if dir == "" {
		return nil, nil
	}
	raw, err := readConfigFile(filepath.Join(dir, CredentialsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	rawMAC, err := readConfigFile(filepath.Join(dir, CredentialsMACFile))
	if err != nil {
		return nil, fmt.Errorf("registry credentials: their MAC: %w", err)
	}
	mac, err := hex.DecodeString(strings.TrimSpace(string(rawMAC)))
	if err != nil || !hmac.Equal(mac, CredentialsMAC(macKey, raw)) {
		return nil, ErrCredentialsNotAuthentic
	}
	return registrymirror.ParseCredentials(raw, ms)
}
