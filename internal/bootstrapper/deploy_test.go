package bootstrapper

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/kubeapi/kubeapitest"
	"github.com/constellation-dev/constellation/internal/provider"
	"github.com/constellation-dev/constellation/internal/tpmtest"
	"github.com/constellation-dev/constellation/internal/upgrade/api/v1alpha1"
	"github.com/constellation-dev/constellation/internal/upgrade/deploy"
)

// deployProvider is the provider of the first node as deployServices asks it: its name, endpoint and AK roots.
type deployProvider struct {
	provider.Node
	roots []*x509.Certificate
}

func (p deployProvider) Name() string                                         { return "mini" }
func (p deployProvider) Endpoint() string                                     { return "http://10.217.0.1:8080" }
func (p deployProvider) AKRoots(context.Context) ([]*x509.Certificate, error) { return p.roots, nil }

// applyingKubernetes applies manifests to a real API server in the order of their lists, as kubectl apply
// does, and records the kinds in that order.
type applyingKubernetes struct {
	recordingKubernetes
	c     client.Client
	kinds []string
}

func (k *applyingKubernetes) Apply(ctx context.Context, manifests []byte) error {
	var l struct{ Items []map[string]any }
	if err := json.Unmarshal(manifests, &l); err != nil {
		return err
	}
	for _, item := range l.Items {
		u := &unstructured.Unstructured{Object: item}
		if err := k.c.Create(ctx, u); err != nil {
			return err
		}
		k.kinds = append(k.kinds, u.GetKind()+"/"+u.GetName())
	}
	return nil
}

// The first node deploys the upgrade controller with the cluster's other services: its CRD before its
// Deployment, which runs the controller's image (of this bootstrapper's version, never pulled) on the
// control-plane nodes; the API server takes every object, and then serves NodeUpgrades.
func TestDeployServicesDeploysTheUpgradeController(t *testing.T) {
	srv := kubeapitest.New(t)
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, v1alpha1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := srv.RESTConfig("kubeapitest-admin", "system:masters")
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	policy := measurements.M{}
	for idx, m := range node.Policy {
		if idx != measurements.PCRClusterID {
			policy[idx] = m
		}
	}
	ms, _ := kms.GenerateMasterSecret()
	d, _ := kms.NewDeriver(ms)
	clusterID, _ := d.ClusterID()
	k8s := &applyingKubernetes{c: c}
	md := deployProvider{roots: []*x509.Certificate{node.CA.Certificate()}}
	ctx := context.Background()
	if err := deployServices(ctx, md, k8s, ms, clusterID, &validators.Policy{Variant: attestation.MiniVTPM.Name, Measurements: policy}, Egress{}); err != nil {
		t.Fatal(err)
	}
	crd, deployment := -1, -1
	for i, k := range k8s.kinds {
		switch k {
		case "CustomResourceDefinition/nodeupgrades.upgrade.constellation.dev":
			crd = i
		case "Deployment/" + deploy.Name:
			deployment = i
		}
	}
	if crd < 0 || deployment < crd {
		t.Fatalf("applied %v: want the NodeUpgrade CRD, then the controller's Deployment", k8s.kinds)
	}
	var dep appsv1.Deployment
	if err := c.Get(ctx, types.NamespacedName{Namespace: "kube-system", Name: deploy.Name}, &dep); err != nil {
		t.Fatal(err)
	}
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 || pod.Containers[0].Image != deploy.Image() || pod.Containers[0].ImagePullPolicy != "Never" {
		t.Fatalf("the controller's container: %+v", pod.Containers)
	}
	if _, ok := pod.NodeSelector["node-role.kubernetes.io/control-plane"]; !ok || pod.ServiceAccountName != deploy.Name {
		t.Fatalf("the controller runs on %v as %q", pod.NodeSelector, pod.ServiceAccountName)
	}
	// The API server serves NodeUpgrades once it established the CRD (no wall clock: the test's timeout
	// bounds the wait).
	for {
		var list v1alpha1.NodeUpgradeList
		if err := c.List(ctx, &list); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}
