package joinservice

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func csrWith(t testing.TB, tmpl *x509.CertificateRequest, key any) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// A node gets a kubelet certificate for its own attested name only, and for nothing more than the client
// identity of a node.
func TestCheckKubeletCSR(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	subject := pkix.Name{CommonName: "system:node:worker-0", Organization: []string{"system:nodes"}}
	good := csrWith(t, &x509.CertificateRequest{Subject: subject}, p256)
	if _, err := CheckKubeletCSR(good, "worker-0"); err != nil {
		t.Fatalf("a node's own request: %v", err)
	}
	masters := subject
	masters.Organization = []string{"system:masters"}
	twoOrgs := subject
	twoOrgs.Organization = []string{"system:nodes", "system:masters"}
	withOU := subject
	withOU.OrganizationalUnit = []string{"x"}
	tampered := append([]byte{}, good...)
	tampered[len(tampered)-5] ^= 1
	for name, c := range map[string]struct {
		der  []byte
		node string
		want string
	}{
		"another node's name":  {good, "worker-1", "may only ask for CN=system:node:worker-1"},
		"no attested name":     {good, "", "no name"},
		"admin group":          {csrWith(t, &x509.CertificateRequest{Subject: masters}, p256), "worker-0", "may only ask"},
		"a second group":       {csrWith(t, &x509.CertificateRequest{Subject: twoOrgs}, p256), "worker-0", "may only ask"},
		"other subject fields": {csrWith(t, &x509.CertificateRequest{Subject: withOU}, p256), "worker-0", "may only ask"},
		"DNS names":            {csrWith(t, &x509.CertificateRequest{Subject: subject, DNSNames: []string{"kubernetes"}}, p256), "worker-0", "names or extensions"},
		"IP addresses":         {csrWith(t, &x509.CertificateRequest{Subject: subject, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}, p256), "worker-0", "names or extensions"},
		"P-224 key":            {csrWith(t, &x509.CertificateRequest{Subject: subject}, p224), "worker-0", "curve"},
		"1024-bit RSA":         {csrWith(t, &x509.CertificateRequest{Subject: subject}, rsa1024), "worker-0", "RSA with 1024 bits"},
		"Ed25519 key":          {csrWith(t, &x509.CertificateRequest{Subject: subject}, ed), "worker-0", "use ECDSA or RSA"},
		"tampered signature":   {tampered, "worker-0", "not signed"},
		"truncated":            {good[:len(good)/2], "worker-0", "does not parse"},
		"empty":                {nil, "worker-0", "does not parse"},
	} {
		if _, err := CheckKubeletCSR(c.der, c.node); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, c.want)
		}
	}
}

// The certificate is a client certificate for the request's key and name, signed by the cluster CA, never
// valid beyond the CA; a CA key that is not the certificate's is refused.
func TestSignKubelet(t *testing.T) {
	pki := filepath.Dir(writeCA(t))
	ca, err := loadClusterCA(pki)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := CheckKubeletCSR(csrWith(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:w", Organization: []string{"system:nodes"}}}, key), "w")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	der, err := ca.signKubelet(csr, now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: now}); err != nil {
		t.Fatalf("the kubelet certificate does not verify as a client certificate of the cluster CA: %v", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) || cert.IsCA || cert.NotAfter.After(ca.cert.NotAfter) {
		t.Fatalf("certificate: key matches %v, CA %v, not after %v (CA until %v)", key.PublicKey.Equal(cert.PublicKey), cert.IsCA, cert.NotAfter, ca.cert.NotAfter)
	}

	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherDER, _ := x509.MarshalECPrivateKey(other)
	os.WriteFile(filepath.Join(pki, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: otherDER}), 0o600)
	if _, err := loadClusterCA(pki); err == nil || !strings.Contains(err.Error(), "not the key of ca.crt") {
		t.Fatalf("a CA key of another CA: %v", err)
	}
}

func FuzzCheckKubeletCSR(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.Add(csrWith(f, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:worker-0", Organization: []string{"system:nodes"}}}, key))
	f.Add(csrWith(f, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:worker-0"}, DNSNames: []string{"x"}}, key))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := CheckKubeletCSR(der, "worker-0")
		if err == nil && (csr.Subject.CommonName != "system:node:worker-0" || len(csr.Subject.Organization) != 1 || csr.Subject.Organization[0] != "system:nodes") {
			t.Fatalf("accepted a request for %v", csr.Subject)
		}
	})
}
