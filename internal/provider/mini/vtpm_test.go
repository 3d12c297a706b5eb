package mini

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
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
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/measuredboot"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
	"github.com/constellation-dev/constellation/internal/swtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// TestMeasuredBootThroughMetadata boots a node's TPM as the provider does, then acts as the node (enrolls its
// AK through the metadata service, issues evidence with the served event log) and as the verifier (policy
// computed from the image by the build's code). A node booted from a modified image is refused, and the
// refusal names the image.
func TestMeasuredBootThroughMetadata(t *testing.T) {
	if _, err := exec.LookPath("swtpm"); err != nil {
		t.Skip("swtpm not installed; run scripts/setup.sh")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// The provider: EK CA, AK CA, metadata service, a node's TPM.
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
	defer srv.Close()
	node, err := NewVTPM(ctx, filepath.Join(dir, "node-0"), ekCA)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Shutdown()

	image := filepath.Join(dir, "node-image.squashfs")
	if err := os.WriteFile(image, []byte("the expected node image"), 0o600); err != nil {
		t.Fatal(err)
	}
	digest, err := measuredboot.DigestFile(image)
	if err != nil {
		t.Fatal(err)
	}
	boot := measuredboot.Boot{ImageDigest: digest, Cmdline: "/usr/bin/bootstrapper --provider=mini"}
	policy, err := measuredboot.Expected(boot) // what `make node-image` writes into the configuration
	if err != nil {
		t.Fatal(err)
	}

	bootAndAttest := func(b measuredboot.Boot) error {
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

		// The verifier: trusts the provider's AK CA and the image's expected measurements.
		caPEM, err := client.AKCA(ctx)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(caPEM)
		root, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		v, err := vtpm.NewValidator([]*x509.Certificate{root}, policy, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Validate(ctx, ev, nonce)
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
