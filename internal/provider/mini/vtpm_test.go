package mini

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"maps"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/akca"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
	"github.com/constellation-dev/constellation/internal/swtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// bootFunc boots a node's TPM as the provider does, and as the node (enrolls its AK through the metadata
// service, issues evidence for a nonce with the served event log) returns that evidence, its nonce and the
// provider's AK CA certificate as the metadata service serves it.
type bootFunc func(b measuredboot.Boot) (evidence, nonce []byte, akRoot *x509.Certificate)

// newMeasuredNode starts the provider's side of one node: an EK CA, an AK CA, the metadata service, and the
// node's swtpm.
func newMeasuredNode(t *testing.T) bootFunc {
	t.Helper()
	if _, err := exec.LookPath("swtpm"); err != nil {
		t.Skip("swtpm not installed; run scripts/setup.sh")
	}
	ctx := context.Background()
	dir := t.TempDir()
	ekCA, err := swtpm.NewCA(filepath.Join(dir, "ek-ca"))
	if err != nil {
		t.Fatal(err)
	}
	key, cert, err := tpmtest.NewCACert("mini provider AK CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := akca.New(key, cert, []*x509.Certificate{ekCA.Certificate()})
	if err != nil {
		t.Fatal(err)
	}
	md := metadata.NewServer(ca, nil)
	srv := httptest.NewServer(md.Handler())
	t.Cleanup(srv.Close)
	node, err := NewVTPM(ctx, filepath.Join(dir, "node-0"), ekCA)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Shutdown() })

	return func(b measuredboot.Boot) ([]byte, []byte, *x509.Certificate) {
		t.Helper()
		log, err := node.Boot(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		md.SetInstance(metadata.Instance{Name: "node-0", Role: metadata.RoleControlPlane, IP: "127.0.0.1"}, log, node.EKCertificates())

		// The node.
		client := metadata.NewClient(srv.URL)
		self, err := client.Self(ctx)
		if err != nil || self.Name != "node-0" {
			t.Fatalf("Self = %+v, %v", self, err)
		}
		conn, err := node.Dial()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := akca.Enroll(ctx, conn, "control-plane-1", vtpm.ECC, client); err == nil {
			t.Fatal("a node had its key certified in another instance's name")
		}
		akCert, err := akca.Enroll(ctx, conn, self.Name, vtpm.ECC, client)
		if err != nil {
			t.Fatalf("enrolling through the metadata service: %v", err)
		}
		issuer, err := vtpm.NewIssuer(conn, vtpm.ECC, akCert, func() ([]byte, error) { return client.EventLog(ctx) })
		if err != nil {
			t.Fatal(err)
		}
		defer issuer.Close()
		nonce := make([]byte, attestation.NonceSize)
		ev, err := issuer.Issue(ctx, nonce, nil)
		if err != nil {
			t.Fatal(err)
		}

		// What the verifier trusts: the provider's AK CA.
		caPEM, err := client.AKCA(ctx)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(caPEM)
		root, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return ev, nonce, root
	}
}

// expectedImage writes a node image file and returns its digest.
func expectedImage(t *testing.T) [32]byte {
	t.Helper()
	image := filepath.Join(t.TempDir(), "node-image.squashfs")
	if err := os.WriteFile(image, []byte("the expected node image"), 0o600); err != nil {
		t.Fatal(err)
	}
	digest, err := measuredboot.DigestFile(image)
	if err != nil {
		t.Fatal(err)
	}
	return digest
}

// TestMeasuredBootThroughMetadata boots a node's TPM as the provider does, then acts as the node (enrolls its
// AK through the metadata service, issues evidence with the served event log) and as the verifier (policy
// computed from the image by the build's code). A node booted from a modified image is refused, and the
// refusal names the image.
func TestMeasuredBootThroughMetadata(t *testing.T) {
	boot := measuredboot.Boot{ImageDigest: expectedImage(t), Cmdline: nodeimage.DefaultCmdline}
	policy, err := measuredboot.Expected(boot) // what `make node-image` writes into the configuration
	if err != nil {
		t.Fatal(err)
	}
	attest := newMeasuredNode(t)
	bootAndAttest := func(b measuredboot.Boot) error {
		ev, nonce, root := attest(b)
		v, err := vtpm.NewValidator([]*x509.Certificate{root}, policy, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Validate(context.Background(), ev, nonce)
		return err
	}

	if err := bootAndAttest(boot); err != nil {
		t.Fatalf("node booted from the expected image refused: %v", err)
	}

	modified := boot
	modified.ImageDigest[0] ^= 1
	err = bootAndAttest(modified)
	var merr *measurements.Error
	if !errors.As(err, &merr) || len(merr.Mismatches) != 1 || merr.Mismatches[0].PCR != measuredboot.PCRNodeImage {
		t.Fatalf("node booted from a modified image: %v, want a PCR 4 mismatch", err)
	}
	if !strings.Contains(err.Error(), "constellation node image sha256:") {
		t.Fatalf("the refusal does not name the image: %v", err)
	}
}

// TestHostChosenBootParametersRefused: the host boots the genuine node image, but with a command line of its
// own for the node's first process (here the genuine bootstrapper behind an environment that makes it trust
// the host's CA). PCR 4 matches the image; only PCR 8 differs. A validator with the policy the image build
// generates refuses the node and names the boot parameters. A policy that leaves PCR 8 missing or warn-only,
// under which the node would pass, is refused wherever a validator is made from it.
func TestHostChosenBootParametersRefused(t *testing.T) {
	genuine := measuredboot.Boot{ImageDigest: expectedImage(t), Cmdline: nodeimage.DefaultCmdline}
	policy, err := measuredboot.Expected(genuine) // what `make node-image` writes into the configuration
	if err != nil {
		t.Fatal(err)
	}
	hostBoot := genuine
	hostBoot.Cmdline = "/usr/bin/env SSL_CERT_FILE=/run/host/ca.pem " + nodeimage.DefaultCmdline
	ev, nonce, root := newMeasuredNode(t)(hostBoot)
	roots := []*x509.Certificate{root}
	ctx := context.Background()

	v, err := vtpm.NewValidator(roots, policy, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Validate(ctx, ev, nonce)
	var merr *measurements.Error
	if !errors.As(err, &merr) || len(merr.Mismatches) != 1 || merr.Mismatches[0].PCR != measuredboot.PCRBootParams {
		t.Fatalf("node booted with the host's command line: %v, want a PCR 8 mismatch", err)
	}
	if !strings.Contains(err.Error(), "constellation boot parameters: "+hostBoot.Cmdline) {
		t.Fatalf("the refusal does not name the boot parameters: %v", err)
	}

	// The generated policy with PCR 8 weakened: neither the vTPM validator nor the validator factory the CLI and
	// the join service use is made from it, so the node cannot pass.
	missing := maps.Clone(policy)
	delete(missing, measuredboot.PCRBootParams)
	warnOnly := maps.Clone(policy)
	warnOnly[measuredboot.PCRBootParams] = measurements.Measurement{Expected: policy[measuredboot.PCRBootParams].Expected, WarnOnly: true}
	for name, weak := range map[string]measurements.M{"PCR 8 missing": missing, "PCR 8 warn-only": warnOnly} {
		makers := map[string]func() (attestation.Validator, error){
			"vtpm.NewValidator": func() (attestation.Validator, error) { return vtpm.NewValidator(roots, weak, nil) },
			"validators.New": func() (attestation.Validator, error) {
				return validators.New(&validators.Policy{Variant: attestation.MiniVTPM.Name, Measurements: weak, AKRoots: roots}, validators.Options{})
			},
		}
		for maker, mk := range makers {
			v, err := mk()
			if err == nil {
				if _, err := v.Validate(ctx, ev, nonce); err == nil {
					t.Errorf("%s, %s: the node the host booted with its own command line was accepted", name, maker)
				} else {
					t.Errorf("%s, %s: the policy was accepted (the node was refused: %v)", name, maker, err)
				}
				continue
			}
			if !errors.Is(err, measurements.ErrAcceptsAnyImage) || !strings.Contains(err.Error(), name) {
				t.Errorf("%s, %s: %v, want ErrAcceptsAnyImage naming %s", name, maker, err, name)
			}
		}
	}
}
