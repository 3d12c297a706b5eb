package bootstrapper

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
)

func TestWritePKI(t *testing.T) {
	var files []*joinpb.PKIFile
	for _, name := range joinpb.ControlPlaneFiles {
		files = append(files, &joinpb.PKIFile{Name: name, Content: []byte(name)})
	}
	dir := t.TempDir()
	if err := writePKI(dir, files); err != nil {
		t.Fatal(err)
	}
	for _, name := range joinpb.ControlPlaneFiles {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if want := os.FileMode(0o644); strings.HasSuffix(name, ".key") && fi.Mode().Perm() != 0o600 || !strings.HasSuffix(name, ".key") && fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v", name, fi.Mode().Perm())
		}
	}
	for name, bad := range map[string][]*joinpb.PKIFile{
		"missing file":   files[1:],
		"escaping path":  append(append([]*joinpb.PKIFile{}, files[1:]...), &joinpb.PKIFile{Name: "../../etc/passwd"}),
		"duplicate file": append(append([]*joinpb.PKIFile{}, files[1:]...), files[1]),
	} {
		if err := writePKI(t.TempDir(), bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The kubelet's credentials from a join answer are used only if the CA is the pinned one and the certificate
// is that CA's, for the kubelet's own key.
func TestKubeletCredentials(t *testing.T) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	sum := sha256.Sum256(ca.RawSubjectPublicKeyInfo)
	hash := "sha256:" + hex.EncodeToString(sum[:])
	key, csrDER, err := kubeletRequest("worker-0")
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(csrDER)
	if csr.Subject.CommonName != "system:node:worker-0" || csr.Subject.Organization[0] != "system:nodes" {
		t.Fatalf("request subject %v", csr.Subject)
	}
	issue := func(pub any, signer *ecdsa.PrivateKey, parent *x509.Certificate) []byte {
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: csr.Subject, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	good := &joinpb.JoinResponse{CaCertificate: caDER, CaCertHash: hash, KubeletCertificate: issue(&key.PublicKey, caKey, ca)}
	creds, err := kubeletCredentials(good, key)
	if err != nil || !strings.Contains(string(creds.Key), "EC PRIVATE KEY") || !strings.Contains(string(creds.Cert), "CERTIFICATE") {
		t.Fatalf("good answer: %v", err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	impostorDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &other.PublicKey, other) // same name, another key
	impostor, _ := x509.ParseCertificate(impostorDER)
	for name, resp := range map[string]*joinpb.JoinResponse{
		"CA not pinned":          {CaCertificate: caDER, CaCertHash: "sha256:" + strings.Repeat("0", 64), KubeletCertificate: good.KubeletCertificate},
		"another key":            {CaCertificate: caDER, CaCertHash: hash, KubeletCertificate: issue(&other.PublicKey, caKey, ca)},
		"not signed by the CA":   {CaCertificate: caDER, CaCertHash: hash, KubeletCertificate: issue(&key.PublicKey, other, impostor)},
		"no kubelet certificate": {CaCertificate: caDER, CaCertHash: hash},
		"no CA":                  {CaCertHash: hash, KubeletCertificate: good.KubeletCertificate},
	} {
		if _, err := kubeletCredentials(resp, key); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
