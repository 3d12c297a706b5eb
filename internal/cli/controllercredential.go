package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path/filepath"
	"time"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/kubeapi"
	"github.com/constellation-dev/constellation/internal/provider"
)

// ControllerCredentialFile is the workspace file that holds the cluster's controller credential (hex, mode
// 0600). 'apply' generates it when it creates the nodes and hands the provider only its SHA-256; the provider
// creates and deletes nodes only for a caller who presents the credential itself: the cluster's upgrade
// controller, which reads it from the Secret kube-system/constellation-provider-credential that 'apply' creates
// after init. It stays in the workspace, so that a retried 'apply' or a recovery keeps the credential whose
// hash the provider knows.
const ControllerCredentialFile = "constellation-controller-credential"

// loadOrCreateControllerCredential returns the workspace's controller credential, generating it (random bytes
// from crypto/rand) when the workspace has none.
func loadOrCreateControllerCredential(ws string) ([]byte, error) {
	cred, err := readControllerCredential(ws)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return cred, err
	}
	cred = make([]byte, provider.FleetCredentialSize)
	if _, err := rand.Read(cred); err != nil {
		return nil, fmt.Errorf("generating the controller credential: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(ws, ControllerCredentialFile), []byte(hex.EncodeToString(cred)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("keeping the controller credential: %w", err)
	}
	return cred, nil
}

// readControllerCredential reads the workspace's controller credential; a file that others can read is
// refused. The error wraps fs.ErrNotExist when there is none.
func readControllerCredential(ws string) ([]byte, error) {
	path := filepath.Join(ws, ControllerCredentialFile)
	raw, err := atomicfile.ReadPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("reading the controller credential: %w", err)
	}
	cred, err := hex.DecodeString(string(bytes.TrimSpace(raw)))
	if err != nil || len(cred) != provider.FleetCredentialSize {
		// Never print the content: it may be the credential, slightly damaged.
		return nil, fmt.Errorf("controller credential file %s does not hold %d bytes in hex; remove it and run 'constellation apply' again to give the cluster a new one", path, provider.FleetCredentialSize)
	}
	return cred, nil
}

// controllerCredentialHash is what the provider gets: the hex SHA-256 of the controller credential.
func controllerCredentialHash(cred []byte) string {
	sum := sha256.Sum256(cred)
	return hex.EncodeToString(sum[:])
}

// storeFleetAccess keeps what the cluster's upgrade controller needs to reach the provider (its name, endpoint
// and the controller credential) in the Secret kube-system/constellation-provider-credential, as the
// administrator of the workspace's kubeconfig. A Secret that holds something else (a credential from before
// the workspace's) is replaced. It waits up to a minute for the API server.
func storeFleetAccess(ctx context.Context, ws string, access provider.FleetAccess) error {
	secret, err := access.Secret()
	if err != nil {
		return err
	}
	api, err := kubeapi.FromKubeconfig(filepath.Join(ws, AdminKubeconfigFile))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		err := putFleetSecret(ctx, api, access, secret)
		if err == nil {
			return nil
		}
		var status *kubeapi.StatusError
		if errors.As(err, &status) && status.Code < 500 && status.Code != http.StatusConflict {
			return fmt.Errorf("keeping the controller credential in the cluster: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("keeping the controller credential in the cluster: %w", err)
		case <-time.After(2 * time.Second):
		}
	}
}

func putFleetSecret(ctx context.Context, api *kubeapi.Client, access provider.FleetAccess, secret map[string]any) error {
	path := "/api/v1/namespaces/" + provider.FleetSecretNamespace + "/secrets"
	var existing struct {
		Data map[string][]byte `json:"data"`
	}
	err := api.Do(ctx, http.MethodGet, path+"/"+provider.FleetSecretName, "", nil, &existing)
	switch {
	case err == nil:
		if have, err := provider.FleetAccessFromSecret(existing.Data); err == nil && have.Provider == access.Provider && have.Endpoint == access.Endpoint &&
			subtle.ConstantTimeCompare(have.Credential, access.Credential) == 1 {
			return nil
		}
		// The Secret is immutable: replace it.
		if err := api.Do(ctx, http.MethodDelete, path+"/"+provider.FleetSecretName, "", nil, nil); err != nil && !kubeapi.IsStatus(err, http.StatusNotFound) {
			return err
		}
	case !kubeapi.IsStatus(err, http.StatusNotFound):
		return err
	}
	return api.Do(ctx, http.MethodPost, path, "", secret, nil)
}
