package swtpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/constellation-dev/constellation/internal/cadir"
)

func requireSwtpm(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("swtpm"); err != nil {
		t.Skipf("swtpm binary not found (install the Debian packages swtpm and swtpm-tools): %v", err)
	}
}

// manufacture creates a CA and a manufactured TPM state in fresh temporary directories.
func manufacture(t *testing.T) (*CA, string) {
	t.Helper()
	ca, err := NewCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	stateDir := filepath.Join(t.TempDir(), "state")
	start := time.Now()
	if err := Manufacture(context.Background(), stateDir, ca); err != nil {
		t.Fatalf("Manufacture: %v", err)
	}
	t.Logf("Manufacture took %v", time.Since(start))
	return ca, stateDir
}

func start(t *testing.T, stateDir string) *TPM {
	t.Helper()
	begin := time.Now()
	tpm, err := Start(context.Background(), stateDir)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("Start took %v", time.Since(begin))
	t.Cleanup(func() { _ = tpm.Close() })
	return tpm
}

func dial(t *testing.T, tpm *TPM) io.ReadWriteCloser {
	t.Helper()
	rw, err := tpm.Dial()
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = rw.Close() })
	return rw
}

func TestEKCertificates(t *testing.T) {
	requireSwtpm(t)
	t.Parallel()
	ca, stateDir := manufacture(t)

	reloaded, err := NewCA(ca.dir)
	if err != nil {
		t.Fatalf("reloading CA: %v", err)
	}
	if !reloaded.Certificate().Equal(ca.Certificate()) || !bytes.Equal(reloaded.CertPEM(), ca.CertPEM()) {
		t.Error("reloaded CA differs from the created one")
	}
	if fi, err := os.Stat(filepath.Join(ca.dir, cadir.KeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("CA key file: %v, mode %v; want mode 0600", err, fi.Mode().Perm())
	}

	tpm := start(t, stateDir)
	if second, err := Start(context.Background(), stateDir); err == nil {
		second.Close()
		t.Fatal("second Start on a running state succeeded")
	} else {
		t.Logf("second Start: %v", err)
	}
	rw := dial(t, tpm)

	ekFromTemplate := func(tmpl tpm2.Public) func() (crypto.PublicKey, error) {
		return func() (crypto.PublicKey, error) {
			k, err := client.NewKey(rw, tpm2.HandleEndorsement, tmpl)
			if err != nil {
				return nil, err
			}
			defer k.Close()
			return k.PublicKey(), nil
		}
	}
	tests := []struct {
		name  string
		index uint32
		ek    func() (crypto.PublicKey, error)
	}{
		{"RSA-2048", client.EKCertNVIndexRSA, ekFromTemplate(client.DefaultEKTemplateRSA())},
		{"ECC-P256", client.EKCertNVIndexECC, ekFromTemplate(client.DefaultEKTemplateECC())},
		{"ECC-P384", 0x01c00016, func() (crypto.PublicKey, error) { // persisted by swtpm_setup
			pub, _, _, err := tpm2.ReadPublic(rw, 0x81010016)
			if err != nil {
				return nil, err
			}
			return pub.Key()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			idx := tpmutil.Handle(tc.index)
			der, err := tpm2.NVReadEx(rw, idx, tpm2.HandleOwner, "", 1024)
			if err != nil {
				t.Fatalf("NVReadEx(0x%x, owner auth): %v", tc.index, err)
			}
			if viaIndex, err := tpm2.NVReadEx(rw, idx, idx, "", 1024); err != nil || !bytes.Equal(viaIndex, der) {
				t.Errorf("NVReadEx(0x%x, index auth): %v (equal: %v)", tc.index, err, bytes.Equal(viaIndex, der))
			}
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatalf("parsing EK certificate: %v", err)
			}
			t.Logf("serial %v, subject %q, unhandled critical extensions %v, EKU %v",
				cert.SerialNumber, cert.Subject, cert.UnhandledCriticalExtensions, cert.UnknownExtKeyUsage)
			if err := cert.CheckSignatureFrom(ca.Certificate()); err != nil {
				t.Errorf("EK certificate not signed by the CA: %v", err)
			}
			// Full chain verification works once the TPM-specific critical SAN is accepted.
			roots := x509.NewCertPool()
			roots.AddCert(ca.Certificate())
			verifiable := *cert
			verifiable.UnhandledCriticalExtensions = nil
			if _, err := verifiable.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				t.Errorf("verifying EK certificate chain: %v", err)
			}
			ekPub, err := tc.ek()
			if err != nil {
				t.Fatalf("getting EK: %v", err)
			}
			if !cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(ekPub) {
				t.Error("EK certificate does not certify the TPM's EK")
			}
		})
	}

	// go-tpm-tools finds and checks the certificates by itself.
	for name, newEK := range map[string]func(io.ReadWriter) (*client.Key, error){
		"RSA": client.EndorsementKeyRSA, "ECC": client.EndorsementKeyECC,
	} {
		ek, err := newEK(rw)
		if err != nil {
			t.Fatalf("client.EndorsementKey%s: %v", name, err)
		}
		if ek.Cert() == nil {
			t.Errorf("client.EndorsementKey%s found no certificate", name)
		}
		ek.Close()
	}

	der, err := tpm2.NVReadEx(rw, 0x01c08000, tpm2.HandleOwner, "", 1024)
	if err != nil {
		t.Fatalf("reading platform certificate: %v", err)
	}
	if platformCert, err := x509.ParseCertificate(der); err != nil {
		t.Errorf("parsing platform certificate: %v", err)
	} else if err := platformCert.CheckSignatureFrom(ca.Certificate()); err != nil {
		t.Errorf("platform certificate not signed by the CA: %v", err)
	} else {
		t.Logf("platform certificate: subject %q, unhandled critical extensions %v",
			platformCert.Subject, platformCert.UnhandledCriticalExtensions)
	}

	if err := tpm.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, p := range []string{tpm.SocketPath(), filepath.Join(stateDir, ctrlFile)} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("socket %s still exists after Close: %v", p, err)
		}
	}
	if _, err := tpm.Dial(); err == nil {
		t.Error("Dial after Close succeeded")
	}
}

// TestRestart proves that Close stops the TPM cleanly: after repeated Close/Start cycles the
// dictionary-attack lockout counter is still zero and quotes work.
func TestRestart(t *testing.T) {
	requireSwtpm(t)
	t.Parallel()
	_, stateDir := manufacture(t)

	for cycle := range 6 {
		tpm := start(t, stateDir)
		rw, err := tpm.Dial()
		if err != nil {
			t.Fatalf("cycle %d: Dial: %v", cycle, err)
		}
		vals, _, err := tpm2.GetCapability(rw, tpm2.CapabilityTPMProperties, 1, uint32(tpm2.LockoutCounter))
		if err != nil {
			t.Fatalf("cycle %d: reading lockout counter: %v", cycle, err)
		}
		if prop := vals[0].(tpm2.TaggedProperty); prop.Tag != tpm2.LockoutCounter || prop.Value != 0 {
			t.Errorf("cycle %d: lockout counter %+v, want 0", cycle, prop)
		}
		ak, err := client.AttestationKeyECC(rw)
		if err != nil {
			t.Fatalf("cycle %d: creating AK: %v", cycle, err)
		}
		if _, err := ak.Quote(client.FullPcrSel(tpm2.AlgSHA256), []byte("nonce")); err != nil {
			t.Fatalf("cycle %d: Quote: %v", cycle, err)
		}
		ak.Close()
		if _, err := client.ReadAllPCRs(rw); err != nil {
			t.Fatalf("cycle %d: reading PCRs: %v", cycle, err)
		}
		if cycle%2 == 0 { // odd cycles leave the client connection for Close to clean up
			rw.Close()
		}
		if err := tpm.Close(); err != nil {
			t.Fatalf("cycle %d: Close: %v", cycle, err)
		}
	}
}

func TestStartWithoutState(t *testing.T) {
	requireSwtpm(t)
	t.Parallel()
	_, err := Start(context.Background(), filepath.Join(t.TempDir(), "missing"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Start on missing directory: got %v, want a not-exist error", err)
	}
	_, err = Start(context.Background(), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "no TPM state") {
		t.Errorf("Start on empty directory: got %v, want a 'no TPM state' error", err)
	}
}

func TestManufactureRefusesExistingState(t *testing.T) {
	requireSwtpm(t)
	t.Parallel()
	ca, stateDir := manufacture(t)
	before, err := os.ReadFile(filepath.Join(stateDir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	err = Manufacture(context.Background(), stateDir, ca)
	if err == nil || !strings.Contains(err.Error(), "already holds a TPM state") {
		t.Fatalf("second Manufacture: got %v, want an 'already holds a TPM state' error", err)
	}
	after, err := os.ReadFile(filepath.Join(stateDir, stateFile))
	if err != nil || !bytes.Equal(before, after) {
		t.Errorf("TPM state changed or vanished after refused Manufacture: %v", err)
	}
}
