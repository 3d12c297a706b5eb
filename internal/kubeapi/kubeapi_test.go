package kubeapi

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
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// clientCert returns a self-signed client certificate and key in PEM.
func clientCert(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// A kubeconfig as kubeadm writes it for the kubelet (files, one relative) and as for the administrator (inline
// data) both authenticate with their client certificate.
func TestFromKubeconfig(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, `{"message":"no client certificate"}`, http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, `{"user":%q}`, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
	srv.StartTLS()
	defer srv.Close()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	dir := t.TempDir()

	cert, key := clientCert(t, "system:node:worker-0")
	os.WriteFile(filepath.Join(dir, "kubelet.pem"), append(cert, key...), 0o600)
	os.WriteFile(filepath.Join(dir, "ca.crt"), caPEM, 0o644)
	files := filepath.Join(dir, "kubelet.conf")
	os.WriteFile(files, []byte(fmt.Sprintf(`apiVersion: v1
clusters:
- cluster: {certificate-authority: ca.crt, server: %q}
  name: default-cluster
users:
- name: default-auth
  user: {client-certificate: %s, client-key: %s}
`, srv.URL, filepath.Join(dir, "kubelet.pem"), filepath.Join(dir, "kubelet.pem"))), 0o600)

	cert, key = clientCert(t, "kubernetes-admin")
	b64 := base64.StdEncoding.EncodeToString
	inline := filepath.Join(dir, "admin.conf")
	os.WriteFile(inline, []byte(fmt.Sprintf(`clusters:
- cluster: {certificate-authority-data: %s, server: %q}
users:
- user: {client-certificate-data: %s, client-key-data: %s}
`, b64(caPEM), srv.URL, b64(cert), b64(key))), 0o600)

	for path, want := range map[string]string{files: "system:node:worker-0", inline: "kubernetes-admin"} {
		c, err := FromKubeconfig(path)
		if err != nil {
			t.Fatalf("%s: %v", filepath.Base(path), err)
		}
		var got struct{ User string }
		if err := c.Do(context.Background(), http.MethodGet, "/whoami", "", nil, &got); err != nil || got.User != want {
			t.Fatalf("%s: authenticated as %q (%v), want %q", filepath.Base(path), got.User, err, want)
		}
	}

	for name, content := range map[string]string{
		"empty":        "",
		"no user":      fmt.Sprintf("clusters:\n- cluster: {certificate-authority-data: %s, server: %q}\n", b64(caPEM), srv.URL),
		"bad base64":   fmt.Sprintf("clusters:\n- cluster: {certificate-authority-data: '!!', server: %q}\nusers:\n- user: {}\n", srv.URL),
		"no key":       fmt.Sprintf("clusters:\n- cluster: {certificate-authority-data: %s, server: %q}\nusers:\n- user: {client-certificate-data: %s}\n", b64(caPEM), srv.URL, b64(cert)),
		"plain http":   fmt.Sprintf("clusters:\n- cluster: {certificate-authority-data: %s, server: http://x}\nusers:\n- user: {client-certificate-data: %s, client-key-data: %s}\n", b64(caPEM), b64(cert), b64(key)),
		"missing file": fmt.Sprintf("clusters:\n- cluster: {certificate-authority: nope.crt, server: %q}\nusers:\n- user: {}\n", srv.URL),
	} {
		path := filepath.Join(dir, "bad.conf")
		os.WriteFile(path, []byte(content), 0o600)
		if _, err := FromKubeconfig(path); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A service account's token is read for every request (Kubernetes rotates it), and a refusal carries the
// API server's message and status.
func TestServiceAccountAndErrors(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer second" {
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`{"kind":"Status","message":"secrets is forbidden"}`))
			return
		}
		w.Write([]byte(`{"ok":true}`))
	}))
	defer srv.Close()
	sa := t.TempDir()
	os.WriteFile(filepath.Join(sa, CAFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	os.WriteFile(filepath.Join(sa, TokenFile), []byte("first\n"), 0o600)
	c, err := FromServiceAccount(srv.URL, sa)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Do(context.Background(), http.MethodGet, "/x", "", nil, nil)
	if !IsStatus(err, http.StatusForbidden) || IsStatus(err, http.StatusNotFound) || !strings.Contains(err.Error(), "secrets is forbidden") {
		t.Fatalf("refusal = %v", err)
	}
	os.WriteFile(filepath.Join(sa, TokenFile), []byte("second\n"), 0o600)
	var out struct{ OK bool }
	if err := c.Do(context.Background(), http.MethodGet, "/x", "", nil, &out); err != nil || !out.OK {
		t.Fatalf("with the rotated token: %v %v", out, err)
	}
	if _, err := FromServiceAccount(srv.URL, t.TempDir()); err == nil {
		t.Fatal("a service account without a CA was accepted")
	}
}
