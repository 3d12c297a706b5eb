// Package kubeapi is a minimal client of the Kubernetes REST API for this project's components: JSON
// requests to an API server, authenticated with a kubeconfig (client certificate, inline or by file, as
// kubeadm writes them) or a pod's service account (token re-read per request, as Kubernetes rotates it).
// Errors carry the API server's status and message.
package kubeapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Client talks to one API server.
type Client struct {
	server string // https://host:port
	http   *http.Client
	token  func() (string, error) // bearer token, if any
}

// Server returns the API server URL.
func (c *Client) Server() string { return c.server }

func newClient(server string, pool *x509.CertPool, certs []tls.Certificate) (*Client, error) {
	if !strings.HasPrefix(server, "https://") {
		return nil, fmt.Errorf("API server %q: want https://host:port", server)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs, MinVersion: tls.VersionTLS12}}
	return &Client{server: strings.TrimSuffix(server, "/"), http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}, nil
}

// Service account files Kubernetes mounts into every pod.
const (
	ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
	TokenFile         = "token"
	CAFile            = "ca.crt"
)

// FromServiceAccount returns a client of server that authenticates with the service account in saDir.
func FromServiceAccount(server, saDir string) (*Client, error) {
	ca, err := os.ReadFile(filepath.Join(saDir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("reading the cluster CA of the service account: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s holds no PEM certificate", filepath.Join(saDir, CAFile))
	}
	c, err := newClient(server, pool, nil)
	if err != nil {
		return nil, err
	}
	c.token = func() (string, error) {
		t, err := os.ReadFile(filepath.Join(saDir, TokenFile))
		if err != nil {
			return "", fmt.Errorf("reading the service account token: %w", err)
		}
		return strings.TrimSpace(string(t)), nil
	}
	return c, nil
}

// kubeconfig is the part of a kubeconfig file read here: the first cluster and user.
type kubeconfig struct {
	Clusters []struct {
		Cluster struct {
			Server string `json:"server"`
			CAData string `json:"certificate-authority-data"`
			CAFile string `json:"certificate-authority"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		User struct {
			CertData string `json:"client-certificate-data"`
			KeyData  string `json:"client-key-data"`
			CertFile string `json:"client-certificate"`
			KeyFile  string `json:"client-key"`
		} `json:"user"`
	} `json:"users"`
}

// FromKubeconfig returns a client with the first cluster and user of the kubeconfig at path. Files it names
// are read now, relative to the kubeconfig's directory.
func FromKubeconfig(path string) (*Client, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var kc kubeconfig
	if err := yaml.Unmarshal(raw, &kc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(kc.Clusters) == 0 || len(kc.Users) == 0 {
		return nil, fmt.Errorf("%s has no cluster or no user", path)
	}
	// value returns inline data (base64) or the content of the named file.
	value := func(what, data, file string) ([]byte, error) {
		if data != "" {
			b, err := base64.StdEncoding.DecodeString(data)
			if err != nil {
				return nil, fmt.Errorf("%s: %s is not base64", path, what)
			}
			return b, nil
		}
		if file == "" {
			return nil, fmt.Errorf("%s has no %s", path, what)
		}
		if !filepath.IsAbs(file) {
			file = filepath.Join(filepath.Dir(path), file)
		}
		return os.ReadFile(file)
	}
	cl, u := kc.Clusters[0].Cluster, kc.Users[0].User
	ca, err := value("cluster CA certificate", cl.CAData, cl.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s: no PEM cluster CA certificate", path)
	}
	certPEM, err := value("client certificate", u.CertData, u.CertFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := value("client key", u.KeyData, u.KeyFile)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: client certificate: %w", path, err)
	}
	return newClient(cl.Server, pool, []tls.Certificate{cert})
}

// StatusError is an API server's refusal.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("the API server answered %d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
}

// IsStatus tells whether err is the API server's answer with the given HTTP status code.
func IsStatus(err error, code int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == code
}

// Merge-patch content type, for Do's body.
const MergePatch = "application/merge-patch+json"

// Do sends a request with in (if not nil) as JSON and decodes a successful answer into out (if not nil). For
// PATCH, contentType says the kind of patch; otherwise it is JSON.
func (c *Client) Do(ctx context.Context, method, path, contentType string, in, out any) error {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, body)
	if err != nil {
		return err
	}
	if contentType == "" {
		contentType = "application/json"
	}
	if in != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

// send sends req as the client (JSON answers, its bearer token) and returns the answer if it is a success;
// otherwise a *StatusError with the API server's message, and the body closed.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	req.Header.Set("Accept", "application/json")
	if c.token != nil {
		t, err := c.token()
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+t)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var status struct{ Message string }
		if json.Unmarshal(msg, &status) == nil && status.Message != "" {
			msg = []byte(status.Message)
		}
		return nil, &StatusError{Code: resp.StatusCode, Message: strings.TrimSpace(string(msg))}
	}
	return resp, nil
}

// WatchEvent is one event of a watch: its type (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR) and the object.
type WatchEvent struct {
	Type   string          `json:"type"`
	Object json.RawMessage `json:"object"`
}

// ErrStopWatch, returned by a Watch callback, ends the watch without an error.
var ErrStopWatch = errors.New("stop watching")

// Watch sends a watch request for path (a collection with its query: watch=1 is added; pass timeoutSeconds
// below the client's timeout of 30 s, a fieldSelector and the resourceVersion to start from) and calls fn for
// each event, until the API server ends the stream (nil), fn returns an error (ErrStopWatch: nil), or ctx
// ends.
func (c *Client) Watch(ctx context.Context, path string, fn func(WatchEvent) error) error {
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.server+path+sep+"watch=1", nil)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev WatchEvent
		if err := dec.Decode(&ev); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("watching %s: %w", path, err)
		}
		if err := fn(ev); errors.Is(err, ErrStopWatch) {
			return nil
		} else if err != nil {
			return err
		}
	}
}
