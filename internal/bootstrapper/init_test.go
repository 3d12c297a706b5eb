package bootstrapper

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/bootstrapper/initpb"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// recordingKubernetes stands in for kubeadm, which the end-to-end test (test/e2e) runs for real; here only
// the init protocol is under test.
type recordingKubernetes struct{ inits int }

func (r *recordingKubernetes) PrepareRuntime(context.Context) error { return nil }
func (r *recordingKubernetes) Init(context.Context) ([]byte, error) {
	r.inits++
	return []byte("kubeconfig"), nil
}
func (r *recordingKubernetes) Join(context.Context, string, string, string) error { return nil }

func TestInitIsOneShotAndMeasuresTheClusterID(t *testing.T) {
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	k8s := &recordingKubernetes{}
	var started []byte
	s := &initServer{issuer: node.Issuer, k8s: k8s, log: slog.New(slog.DiscardHandler),
		initialised: func(clusterID []byte, _ measurements.M) error { started = clusterID; return nil }}
	ms, _ := kms.GenerateMasterSecret()
	policy, _ := json.Marshal(node.Policy)
	ctx := context.Background()

	// Malformed requests change nothing: the node stays fresh.
	for name, req := range map[string]*initpb.InitRequest{
		"short secret": {MasterSecret: []byte{1}, Salt: ms.Salt, Measurements: policy},
		"no policy":    {MasterSecret: ms.Key, Salt: ms.Salt},
	} {
		if _, err := s.Init(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("%s: Init = %v, want InvalidArgument", name, err)
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

	resp, err := s.Init(ctx, &initpb.InitRequest{MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	d, _ := kms.NewDeriver(ms)
	want, _ := d.ClusterID()
	if !bytes.Equal(resp.GetClusterId(), want) || string(resp.GetKubeconfig()) != "kubeconfig" {
		t.Fatalf("Init response: cluster ID %x, want %x", resp.GetClusterId(), want)
	}
	if exp := measuredboot.ExpectedClusterIDPCR(want); !bytes.Equal(pcr15(), exp[:]) {
		t.Fatalf("PCR 15 = %x, want the cluster ID's %s", pcr15(), exp)
	}
	if !bytes.Equal(started, want) {
		t.Fatal("the join service was not started with the cluster ID")
	}
	if _, err := s.Init(ctx, &initpb.InitRequest{MasterSecret: ms.Key, Salt: ms.Salt, Measurements: policy}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second Init = %v, want FailedPrecondition", err)
	}
	if k8s.inits != 1 {
		t.Fatalf("kubeadm init ran %d times", k8s.inits)
	}
}
