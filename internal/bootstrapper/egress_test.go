package bootstrapper

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/registrymirror"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

const (
	testPassword = "S3cret-pa55w0rd"
	testToken    = "t0ken-secret-value"
)

// The registry credentials and DNS servers of an init request are validated with the mirrors before the node acts
// on the request: credentials or servers that would add TOML to containerd's configuration, lines to the
// resolv.conf or directives to CoreDNS's Corefile, and credentials that would cross the network in plaintext,
// are refused, the node stays fresh, and neither the refusal nor the node's log shows a credential. Valid ones
// configure the runtime before it starts and go on to the join service (the Secret and the join configuration).
func TestInitValidatesEgress(t *testing.T) {
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	k8s := &recordingKubernetes{}
	var handedOn Egress
	var logs bytes.Buffer
	s := &initServer{initSecretHash: testInitSecretHash[:], issuer: node.Issuer, k8s: k8s, log: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		life: lifecycleFuncs{initialised: func(_ *kms.MasterSecret, _ []byte, _ *validators.Policy, eg Egress) error {
			handedOn = eg
			return nil
		}}}
	ms, _ := kms.GenerateMasterSecret()
	policy, _ := json.Marshal(node.Policy)
	mirrors := []*initpb.RegistryMirror{
		{Registry: "docker.io", Endpoints: []string{"https://10.0.0.5:5443"}},
		{Registry: "ghcr.io", Endpoints: []string{"https://10.0.0.6"}},
		{Registry: "quay.io", Endpoints: []string{"http://10.0.0.7:5000"}},
	}
	goodCreds := []*initpb.RegistryCredentials{
		{Registry: "docker.io", Username: "robot", Password: testPassword},
		{Registry: "ghcr.io", Token: testToken},
	}
	req := func(creds []*initpb.RegistryCredentials, dns []string) *initpb.InitRequest {
		return &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy, RegistryMirrors: mirrors, RegistryCredentials: creds, DnsServers: dns}
	}
	for name, bad := range map[string]*initpb.InitRequest{
		"TOML in a password":     req([]*initpb.RegistryCredentials{{Registry: "docker.io", Username: "robot", Password: testPassword + "'\n[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = '/tmp"}}, nil),
		"TOML in a token":        req([]*initpb.RegistryCredentials{{Registry: "ghcr.io", Token: testToken + "\"\nusername = \"x"}}, nil),
		"TOML in a user":         req([]*initpb.RegistryCredentials{{Registry: "docker.io", Username: "robot'\npassword = 'x", Password: testPassword}}, nil),
		"an unmirrored registry": req([]*initpb.RegistryCredentials{{Registry: "registry.k8s.io", Username: "robot", Password: testPassword}}, nil),
		"plaintext mirror":       req([]*initpb.RegistryCredentials{{Registry: "quay.io", Username: "robot", Password: testPassword}}, nil),
		"registry TOML":          req([]*initpb.RegistryCredentials{{Registry: "docker.io\".auth]\n[x", Username: "robot", Password: testPassword}}, nil),
		"password and token":     req([]*initpb.RegistryCredentials{{Registry: "docker.io", Username: "robot", Password: testPassword, Token: testToken}}, nil),
		"resolv.conf injection":  req(goodCreds, []string{"10.0.0.53\nnameserver 6.6.6.6"}),
		"Corefile injection":     req(goodCreds, []string{"10.0.0.53\n}\n.:53 {\n    forward . 6.6.6.6"}),
		"DNS name":               req(goodCreds, []string{"dns.example"}),
		"loopback DNS":           req(goodCreds, []string{"127.0.0.53"}),
	} {
		_, err := s.Init(context.Background(), bad)
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("%s: Init = %v, want InvalidArgument", name, err)
		}
		if strings.Contains(err.Error(), testPassword) || strings.Contains(err.Error(), testToken) {
			t.Fatalf("%s: the refusal shows a credential: %v", name, err)
		}
	}
	if s.done || k8s.inits != 0 || len(k8s.mirrors) != 0 || len(k8s.dns) != 0 {
		t.Fatal("a refused init request changed the node")
	}
	if _, err := s.Init(context.Background(), req(goodCreds, []string{"10.0.0.53", "fd00::53"})); err != nil {
		t.Fatal(err)
	}
	want := []registrymirror.Credentials{
		{Registry: "docker.io", Auth: registrymirror.Auth{Username: "robot", Password: testPassword}},
		{Registry: "ghcr.io", Auth: registrymirror.Auth{Token: testToken}},
	}
	if len(k8s.creds) != 1 || !slices.Equal(k8s.creds[0], want) || len(k8s.dns) != 1 || !slices.Equal(k8s.dns[0], []string{"10.0.0.53", "fd00::53"}) {
		t.Fatalf("runtime configured with credentials %v, DNS %v", k8s.creds, k8s.dns)
	}
	if !slices.Equal(handedOn.Credentials, want) || !slices.Equal(handedOn.DNS, []string{"10.0.0.53", "fd00::53"}) || len(handedOn.Mirrors) != 3 {
		t.Fatalf("handed on %v", handedOn)
	}
	if strings.Contains(logs.String(), testPassword) || strings.Contains(logs.String(), testToken) {
		t.Fatalf("the node logged a credential:\n%s", logs.String())
	}
}

// A joining node acts on the egress of the join service's answer only if all of it is valid: an answer whose
// credentials or DNS servers would inject configuration is refused as a whole (the join service checked them
// too, under its MACs; this is the node's own check of what it renders).
func TestJoinAnswerEgressIsValidated(t *testing.T) {
	mirrors := []*joinpb.RegistryMirror{{Registry: "docker.io", Endpoints: []string{"https://10.0.0.5"}}}
	good := []*joinpb.RegistryCredentials{{Registry: "docker.io", Username: "robot", Password: testPassword}}
	eg, err := egressFromWire(mirrors, good, []string{"10.0.0.53"})
	if err != nil || len(eg.Credentials) != 1 || eg.DNS[0] != "10.0.0.53" {
		t.Fatalf("a valid answer: %v, %v", eg, err)
	}
	for name, bad := range map[string]func() (Egress, error){
		"TOML in a password": func() (Egress, error) {
			return egressFromWire(mirrors, []*joinpb.RegistryCredentials{{Registry: "docker.io", Username: "robot", Password: testPassword + "'\n[x]"}}, nil)
		},
		"credentials for an unmirrored registry": func() (Egress, error) {
			return egressFromWire(mirrors, []*joinpb.RegistryCredentials{{Registry: "ghcr.io", Token: testToken}}, nil)
		},
		"resolv.conf injection": func() (Egress, error) {
			return egressFromWire(mirrors, good, []string{"10.0.0.53\nnameserver 6.6.6.6"})
		},
		"four DNS servers": func() (Egress, error) {
			return egressFromWire(mirrors, good, []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"})
		},
	} {
		if _, err := bad(); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), testPassword) || strings.Contains(err.Error(), testToken) {
			t.Errorf("%s: the error shows a credential: %v", name, err)
		}
	}
}

// What a node kept on its state disk is read back as it was written; a kept file that is not valid (the disk is
// encrypted and authenticated, so only a bug could write one) configures nothing.
func TestKeptEgress(t *testing.T) {
	disk := &stateDisk{targets: map[string]string{"var": t.TempDir()}}
	if eg, err := keptEgress(disk); err != nil || eg.Mirrors != nil || eg.Credentials != nil || eg.DNS != nil {
		t.Fatalf("nothing kept: %v, %v", eg, err)
	}
	eg := Egress{
		Mirrors:     []registrymirror.Mirror{{Registry: "docker.io", Endpoints: []string{"https://10.0.0.5"}}},
		Credentials: []registrymirror.Credentials{{Registry: "docker.io", Auth: registrymirror.Auth{Token: testToken}}},
		DNS:         []string{"10.0.0.53"},
	}
	if err := keepEgress(disk, eg); err != nil {
		t.Fatal(err)
	}
	got, err := keptEgress(disk)
	if err != nil || !slices.Equal(got.Credentials, eg.Credentials) || !slices.Equal(got.DNS, eg.DNS) || len(got.Mirrors) != 1 {
		t.Fatalf("kept: %v, %v", got, err)
	}
	for _, f := range []string{disk.credentialsFile(), disk.dnsFile()} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, %v", filepath.Base(f), fi, err)
		}
	}
	os.WriteFile(disk.dnsFile(), []byte(`["10.0.0.53\nnameserver 6.6.6.6"]`), 0o600)
	if _, err := keptEgress(disk); err == nil {
		t.Fatal("an invalid kept DNS list was read")
	}
	os.WriteFile(disk.dnsFile(), []byte(`["10.0.0.53"]`), 0o600)
	os.WriteFile(disk.credentialsFile(), []byte(`[{"registry":"docker.io","token":"x'\n[y]"}]`), 0o600)
	if _, err := keptEgress(disk); err == nil {
		t.Fatal("invalid kept credentials were read")
	}
}
