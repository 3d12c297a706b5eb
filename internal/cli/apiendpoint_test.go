package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testCA is a cluster CA that issues API server certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// apiServerAt serves /readyz with TLS on ip's API server port, with a certificate of ca for ip; status is
// what it answers.
func (ca *testCA) apiServerAt(t *testing.T, ip string, status int) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP(ip)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(apiServerPort)))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) }),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
}

// loopbackIPs returns n distinct addresses of 127.0.0.0/8 on whose API server port nothing listens, as the
// control-plane nodes' addresses.
func loopbackIPs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for len(out) < n {
		v, err := rand.Int(rand.Reader, big.NewInt(1<<22))
		if err != nil {
			t.Fatal(err)
		}
		x := v.Int64()
		ip := fmt.Sprintf("127.%d.%d.%d", 1+x>>16%254, x>>8&0xff, 1+x%254)
		if ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(apiServerPort))); err == nil {
			ln.Close()
			out = append(out, ip)
		}
	}
	return out
}

func writeWorkspace(t *testing.T, ca []byte, endpoint string) string {
	t.Helper()
	ws := t.TempDir()
	kc := strings.Replace(strings.Replace(testAdminKubeconfig, "https://127.0.0.1:7445", "https://"+endpoint, 1),
		`certificate-authority-data: ""`, "certificate-authority-data: "+base64.StdEncoding.EncodeToString(ca), 1)
	if err := os.WriteFile(filepath.Join(ws, AdminKubeconfigFile), []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ws, StateFile), []byte("clusterID: \""+strings.Repeat("07", 32)+"\"\nendpoint: "+endpoint+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return ws
}

// With the control-plane node the admin kubeconfig names down, the kubeconfig and the state move to one that
// answers, whose certificate the cluster CA issued; an API server that the cluster CA did not certify (an
// impostor at a listed address) or that is not ready is passed over.
func TestSelectAPIServer(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	ips := loopbackIPs(t, 4) // down, impostor, not ready, good
	other.apiServerAt(t, ips[1], http.StatusOK)
	ca.apiServerAt(t, ips[2], http.StatusInternalServerError)
	ca.apiServerAt(t, ips[3], http.StatusOK)
	down := netip.AddrPortFrom(netip.MustParseAddr(ips[0]), apiServerPort).String()
	good := netip.AddrPortFrom(netip.MustParseAddr(ips[3]), apiServerPort).String()
	ws := writeWorkspace(t, ca.pem, down)

	got, err := selectAPIServer(context.Background(), ws, ips)
	if err != nil || got != good {
		t.Fatalf("selectAPIServer = %q, %v; want %s", got, err, good)
	}
	raw, _ := os.ReadFile(filepath.Join(ws, AdminKubeconfigFile))
	if server, _, err := kubeconfigServer(raw); err != nil || server != "https://"+good {
		t.Fatalf("the admin kubeconfig names %q (%v), want %s", server, err, good)
	}
	if info, err := os.Stat(filepath.Join(ws, AdminKubeconfigFile)); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("the admin kubeconfig's mode: %v %v", info.Mode(), err)
	}
	if s, ok, err := loadClusterState(ws); err != nil || !ok || s.Endpoint != good || s.ClusterID != strings.Repeat("07", 32) {
		t.Fatalf("state %+v %v %v", s, ok, err)
	}
	// Now it answers: kept as it is.
	if got, err := selectAPIServer(context.Background(), ws, ips); err != nil || got != good {
		t.Fatalf("selectAPIServer again = %q, %v", got, err)
	}

	// None answers: nothing changes, and it says so.
	ws = writeWorkspace(t, ca.pem, down)
	before, _ := os.ReadFile(filepath.Join(ws, AdminKubeconfigFile))
	if _, err := selectAPIServer(context.Background(), ws, ips[:3]); err == nil || !strings.Contains(err.Error(), "no API server") {
		t.Fatalf("with no API server answering: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(ws, AdminKubeconfigFile)); string(after) != string(before) {
		t.Fatal("the admin kubeconfig changed with no API server answering")
	}
}
