package bootstrapper

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/bootstrapper/kubeadm"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kms/kmip"
	"github.com/constellation-dev/constellation/internal/kms/kmip/kmiptest"
	"github.com/constellation-dev/constellation/internal/registrymirror"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// recordingKubernetes stands in for kubeadm, which the end-to-end test (test/e2e) runs for real; here only
// the init protocol is under test.
type recordingKubernetes struct {
	inits, restarts int
	// mirrors, creds and dns are the registry mirror lists, credentials and DNS servers the runtime was
	// configured with, in order.
	mirrors [][]registrymirror.Mirror
	creds   [][]registrymirror.Credentials
	dns     [][]string
}

func (r *recordingKubernetes) ConfigureRegistryMirrors(ms []registrymirror.Mirror, cs []registrymirror.Credentials) error {
	r.mirrors = append(r.mirrors, ms)
	r.creds = append(r.creds, cs)
	return nil
}

func (r *recordingKubernetes) ConfigureDNS(servers []string) error {
	r.dns = append(r.dns, servers)
	return nil
}

func (r *recordingKubernetes) PrepareRuntime(context.Context) error   { return nil }
func (r *recordingKubernetes) EnablePodNetwork(context.Context) error { return nil }
func (r *recordingKubernetes) Init(context.Context) ([]byte, error) {
	r.inits++
	return []byte("kubeconfig"), nil
}
func (r *recordingKubernetes) Join(context.Context, string, string, string, bool, kubeadm.KubeletCredentials) error {
	return nil
}
func (r *recordingKubernetes) Apply(context.Context, []byte) error { return nil }
func (r *recordingKubernetes) ResetJoin(context.Context) error     { return nil }
func (r *recordingKubernetes) ReportJoinFailure(context.Context, error) error {
	return nil
}
func (r *recordingKubernetes) Restart(context.Context) error { r.restarts++; return nil }

func TestInitIsOneShotAndMeasuresTheClusterID(t *testing.T) {
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	k8s := &recordingKubernetes{}
	var started []byte
	var startedWith *validators.Policy
	s := &initServer{initSecretHash: testInitSecretHash[:], issuer: node.Issuer, k8s: k8s, log: slog.New(slog.DiscardHandler),
		life: lifecycleFuncs{initialised: func(_ *kms.MasterSecret, clusterID []byte, att *validators.Policy, _ Egress) error {
			started, startedWith = clusterID, att
			return nil
		}}}
	ms, _ := kms.GenerateMasterSecret()
	policy, _ := json.Marshal(node.Policy)
	ctx := context.Background()

	// Malformed requests change nothing: the node stays fresh.
	for name, req := range map[string]*initpb.InitRequest{
		"short secret": {MasterSecret: []byte{1}, Salt: ms.Salt, Measurements: policy},
		"no policy":    {MasterSecret: ms.Key, Salt: ms.Salt},
		// The join service would refuse every node: they attest as mini-vtpm.
		"other variant":         {MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy, Attestation: []byte(`{"version":1,"variant":"aws-sev-snp"}`)},
		"garbage attestation":   {MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy, Attestation: []byte(`{"version":1,"variant":"mini-vtpm"}x`)},
		"unknown attestation":   {MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy, Attestation: []byte(`{"version":1,"variant":"mini-vtpm","extra":1}`)},
		"attestation version 2": {MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy, Attestation: []byte(`{"version":2,"variant":"mini-vtpm"}`)},
	} {
		req.InitSecret = testInitSecret
		if _, err := s.Init(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("%s: Init = %v, want InvalidArgument", name, err)
		}
	}
	// A policy that would let the join service admit any node image, or the genuine image booted with any boot
	// parameters: refused before anything happens.
	for name, bad := range tpmtest.AcceptAnyImage(node.Policy) {
		raw, _ := json.Marshal(bad)
		if _, err := s.Init(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: raw}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "accepts any node image") {
			t.Fatalf("%s: Init = %v, want InvalidArgument: accepts any node image", name, err)
		}
	}
	pcr15 := func() []byte {
		pcrs, err := client.ReadPCRs(node.TPM, client.FullPcrSel(tpm2.AlgSHA256))
		if err != nil {
			t.Fatal(err)
		}
		return pcrs.GetPcrs()[15]
	}
	if !bytes.Equal(pcr15(), make([]byte, 32)) {
		t.Fatal("a refused init changed PCR 15")
	}

	// As the CLI sends it.
	att, err := validators.MarshalPolicy(&validators.Policy{Variant: "mini-vtpm", Measurements: node.Policy})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.Init(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy, Attestation: att})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	if startedWith == nil || startedWith.Variant != "mini-vtpm" || len(startedWith.Measurements) != len(node.Policy) {
		t.Fatalf("the cluster services were started with the attestation policy %+v", startedWith)
	}
	d, _ := kms.NewDeriver(ms)
	want, _ := d.ClusterID()
	if !bytes.Equal(resp.GetClusterId(), want) || string(resp.GetKubeconfig()) != "kubeconfig" {
		t.Fatalf("Init response: cluster ID %x, want %x", resp.GetClusterId(), want)
	}
	if exp := measurements.ExpectedClusterIDPCR(want); !bytes.Equal(pcr15(), exp[:]) {
		t.Fatalf("PCR 15 = %x, want the cluster ID's %s", pcr15(), exp)
	}
	if !bytes.Equal(started, want) {
		t.Fatal("the join service was not started with the cluster ID")
	}
	if _, err := s.Init(ctx, &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second Init = %v, want FailedPrecondition", err)
	}
	if k8s.inits != 1 {
		t.Fatalf("kubeadm init ran %d times", k8s.inits)
	}
}

// With an external KMS the node gets the master secret only wrapped and unwraps it itself. A KMS that refuses
// (wrong client certificate, corrupted ciphertext, unreachable) leaves the node fresh, so init can be retried.
func TestInitUnwrapsWithTheExternalKMS(t *testing.T) {
	srv := kmiptest.StartForTest(t)
	c, err := kmip.New(srv.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	kek, err := c.CreateKEK(ctx, "init-kek")
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := kms.GenerateMasterSecret()
	file, err := kms.WrapMasterSecret(ctx, c, kek, ms)
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := file.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	corrupted := *file.Wrapped
	corrupted.Ciphertext = bytes.Clone(corrupted.Ciphertext)
	corrupted.Ciphertext[0] ^= 1
	badFile, _ := (&kms.SecretFile{Wrapped: &corrupted, Salt: file.Salt}).Marshal()
	plainFile, _ := (&kms.SecretFile{Plain: ms}).Marshal()

	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	k8s := &recordingKubernetes{}
	s := &initServer{initSecretHash: testInitSecretHash[:], issuer: node.Issuer, k8s: k8s, log: slog.New(slog.DiscardHandler)}
	policy, _ := json.Marshal(node.Policy)
	good := &initpb.KMIP{Endpoint: srv.Endpoint, ServerCa: srv.ServerCA, ClientCert: srv.ClientCert, ClientKey: srv.ClientKey}
	untrusted := &initpb.KMIP{Endpoint: srv.Endpoint, ServerCa: srv.ServerCA, ClientCert: srv.UntrustedClientCert, ClientKey: srv.UntrustedClientKey}
	closed := &initpb.KMIP{Endpoint: "127.0.0.1:1", ServerCa: srv.ServerCA, ClientCert: srv.ClientCert, ClientKey: srv.ClientKey}

	for name, tc := range map[string]struct {
		req  *initpb.InitRequest
		code codes.Code
		msg  string
	}{
		"plain and wrapped": {&initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt, WrappedMasterSecret: wrapped, Kmip: good}, codes.InvalidArgument, "both"},
		"no secret":         {&initpb.InitRequest{InitSecret: testInitSecret, Kmip: good}, codes.InvalidArgument, "no master secret"},
		"plain file":        {&initpb.InitRequest{InitSecret: testInitSecret, WrappedMasterSecret: plainFile, Kmip: good}, codes.InvalidArgument, "plain master secret"},
		"garbage":           {&initpb.InitRequest{InitSecret: testInitSecret, WrappedMasterSecret: []byte("{"), Kmip: good}, codes.InvalidArgument, "wrapped master secret"},
		"no KMS":            {&initpb.InitRequest{InitSecret: testInitSecret, WrappedMasterSecret: wrapped}, codes.InvalidArgument, "KMS configuration"},
		"untrusted client":  {&initpb.InitRequest{InitSecret: testInitSecret, WrappedMasterSecret: wrapped, Kmip: untrusted}, codes.FailedPrecondition, "unwrapping"},
		"corrupted":         {&initpb.InitRequest{InitSecret: testInitSecret, WrappedMasterSecret: badFile, Kmip: good}, codes.FailedPrecondition, "authentication"},
		"KMS unreachable":   {&initpb.InitRequest{InitSecret: testInitSecret, WrappedMasterSecret: wrapped, Kmip: closed}, codes.FailedPrecondition, "unreachable"},
	} {
		tc.req.Measurements = policy
		_, err := s.Init(ctx, tc.req)
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: Init = %v, want %s mentioning %q", name, err, tc.code, tc.msg)
		}
	}
	if k8s.inits != 0 {
		t.Fatal("a refused init ran kubeadm")
	}

	resp, err := s.Init(ctx, &initpb.InitRequest{InitSecret: testInitSecret, WrappedMasterSecret: wrapped, Kmip: good, Measurements: policy})
	if err != nil {
		t.Fatalf("Init with the wrapped master secret: %v", err)
	}
	d, _ := kms.NewDeriver(ms)
	want, _ := d.ClusterID()
	if !bytes.Equal(resp.GetClusterId(), want) {
		t.Fatalf("cluster ID %x, want %x (derived from the unwrapped master secret)", resp.GetClusterId(), want)
	}
}

// The registry mirrors of an init request are validated before the node acts on the request: a list with a name
// or endpoint that would add TOML of its own to containerd's configuration (another host, skip_verify) is refused,
// and the node stays fresh. A valid list configures the runtime before it starts and goes on to the join service.
func TestInitValidatesRegistryMirrors(t *testing.T) {
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	k8s := &recordingKubernetes{}
	var handedOn []registrymirror.Mirror
	s := &initServer{initSecretHash: testInitSecretHash[:], issuer: node.Issuer, k8s: k8s, log: slog.New(slog.DiscardHandler),
		life: lifecycleFuncs{initialised: func(_ *kms.MasterSecret, _ []byte, _ *validators.Policy, eg Egress) error {
			handedOn = eg.Mirrors
			return nil
		}}}
	ms, _ := kms.GenerateMasterSecret()
	policy, _ := json.Marshal(node.Policy)
	req := func(m ...*initpb.RegistryMirror) *initpb.InitRequest {
		return &initpb.InitRequest{InitSecret: testInitSecret, MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy, RegistryMirrors: m}
	}
	for _, bad := range []*initpb.RegistryMirror{
		{Registry: "docker.io\"\nskip_verify = true\n#", Endpoints: []string{"http://10.217.0.1:5000"}},
		{Registry: "docker.io", Endpoints: []string{"http://10.217.0.1:5000\"]\n[host.\"https://6.6.6.6\"]\n#"}},
		{Registry: "docker.io", Endpoints: []string{"http://registry-1.docker.io"}},
		{Registry: "../../etc", Endpoints: []string{"http://10.217.0.1:5000"}},
	} {
		if _, err := s.Init(context.Background(), req(bad)); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("Init with mirror %q -> %q = %v, want InvalidArgument", bad.Registry, bad.Endpoints, err)
		}
	}
	if s.done || k8s.inits != 0 || len(k8s.mirrors) != 0 {
		t.Fatal("a refused init request changed the node")
	}
	good := &initpb.RegistryMirror{Registry: "docker.io", Endpoints: []string{"http://10.217.0.1:5000"}}
	if _, err := s.Init(context.Background(), req(good)); err != nil {
		t.Fatal(err)
	}
	if len(k8s.mirrors) != 1 || len(k8s.mirrors[0]) != 1 || k8s.mirrors[0][0].Registry != "docker.io" || len(handedOn) != 1 {
		t.Fatalf("runtime mirrors %+v, handed on %+v", k8s.mirrors, handedOn)
	}
}

// lifecycleFuncs is a Lifecycle of functions; a nil one does nothing.
type lifecycleFuncs struct {
	startNetwork func(recovery bool) error
	initialised  func(ms *kms.MasterSecret, clusterID []byte, att *validators.Policy, egress Egress) error
	recovered    func(ms *kms.MasterSecret, clusterID []byte, kept KeptPolicy) error
}

func (l lifecycleFuncs) StartNetwork(recovery bool) error {
	if l.startNetwork == nil {
		return nil
	}
	return l.startNetwork(recovery)
}

func (l lifecycleFuncs) Initialised(ms *kms.MasterSecret, clusterID []byte, att *validators.Policy, egress Egress) error {
	if l.initialised == nil {
		return nil
	}
	return l.initialised(ms, clusterID, att, egress)
}

func (l lifecycleFuncs) Recovered(ms *kms.MasterSecret, clusterID []byte, kept KeptPolicy) error {
	if l.recovered == nil {
		return nil
	}
	return l.recovered(ms, clusterID, kept)
}
