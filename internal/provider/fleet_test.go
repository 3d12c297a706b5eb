package provider

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// The Secret round-trips through its JSON form (as the API server stores it) and names its place; a damaged
// one is refused without showing the credential.
func TestFleetAccessSecret(t *testing.T) {
	cred := bytes.Repeat([]byte{0xa5}, FleetCredentialSize)
	a := FleetAccess{Provider: "mini", Endpoint: "http://10.217.0.1:8080", Credential: cred}
	obj, err := a.Secret()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Kind     string
		Metadata struct{ Name, Namespace string }
		Data     map[string][]byte
	}
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if back.Kind != "Secret" || back.Metadata.Name != FleetSecretName || back.Metadata.Namespace != FleetSecretNamespace {
		t.Fatalf("the Secret's place: %s %s/%s", back.Kind, back.Metadata.Namespace, back.Metadata.Name)
	}
	got, err := FleetAccessFromSecret(back.Data)
	if err != nil || got.Provider != a.Provider || got.Endpoint != a.Endpoint || !bytes.Equal(got.Credential, cred) {
		t.Fatalf("FleetAccessFromSecret = %+v, %v", got, err)
	}
	for name, data := range map[string]map[string][]byte{
		"no provider":      {FleetSecretEndpoint: []byte("x"), FleetSecretCredential: cred},
		"no endpoint":      {FleetSecretProvider: []byte("mini"), FleetSecretCredential: cred},
		"short credential": {FleetSecretProvider: []byte("mini"), FleetSecretEndpoint: []byte("x"), FleetSecretCredential: cred[:31]},
	} {
		if _, err := FleetAccessFromSecret(data); err == nil || strings.Contains(err.Error(), "a5a5") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := (FleetAccess{Provider: "mini", Endpoint: "x"}).Secret(); err == nil {
		t.Fatal("a Secret without a credential")
	}
}

func TestChecks(t *testing.T) {
	for _, ok := range []string{"worker-0", "control-plane-12", "a"} {
		if err := CheckNodeName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Worker-0", "worker_0", "-a", "a-", "../x", "a/b", strings.Repeat("a", 64), "worker-0\n"} {
		if CheckNodeName(bad) == nil {
			t.Errorf("node name %q accepted", bad)
		}
	}
	if CheckImageDigest("sha256:"+strings.Repeat("0f", 32)) != nil {
		t.Error("a digest refused")
	}
	for _, bad := range []string{"", "sha256:", "sha256:" + strings.Repeat("0F", 32), "sha512:" + strings.Repeat("0f", 32), "sha256:" + strings.Repeat("0f", 32) + "\n", strings.Repeat("0f", 32)} {
		if CheckImageDigest(bad) == nil {
			t.Errorf("digest %q accepted", bad)
		}
	}
	if CheckRole(RoleWorker) != nil || CheckRole(RoleControlPlane) != nil || CheckRole("master") == nil || CheckRole("") == nil {
		t.Error("CheckRole")
	}
}
