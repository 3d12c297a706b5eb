// Package kmiptest runs a real KMIP server (PyKMIP's pykmip-server) on loopback, with mutual TLS, for tests and
// benchmarks of package kmip. It generates its own PKI, needs no *testing.T, and Stop leaves no process behind:
// pykmip-server runs in its own process group, which Stop kills as a whole.
package kmiptest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/constellation-dev/constellation/internal/kms/kmip"
)

// Binary is the PyKMIP server executable looked up in PATH.
const Binary = "pykmip-server"

// ErrNotInstalled is returned by Start if pykmip-server is not installed (Debian: apt-get install python3-pykmip).
var ErrNotInstalled = errors.New("kmiptest: " + Binary + " not installed (Debian package python3-pykmip)")

// ClientIdentity is the common name of the client certificate; pykmip uses it as the owner of the objects it creates.
const ClientIdentity = "constellation-kmip-client"

const (
	startTimeout = 30 * time.Second // upper bound for pykmip-server to accept TLS
	// Time pykmip-server gets to exit after SIGINT before its process group is killed. Idle, it needs about 1 s (its
	// policy monitor polls every second); with a client connected, over 10 s (it joins each session thread, which
	// only ends when the client disconnects, for 10 s). Killing it loses nothing: it commits every operation.
	stopGrace = 2 * time.Second
)

// Server is a running pykmip-server and the PKI to talk to it.
type Server struct {
	Endpoint   string // 127.0.0.1:port
	ServerCA   []byte // PEM: CA of the server and client certificates
	ClientCert []byte // PEM: client certificate (EKU clientAuth, CN ClientIdentity) signed by ServerCA
	ClientKey  []byte // PEM (PKCS #8)

	// A second, unrelated CA and a client certificate it signed: the server rejects this client, and a client
	// that trusts only UntrustedCA rejects the server.
	UntrustedCA         []byte
	UntrustedClientCert []byte
	UntrustedClientKey  []byte
	// A client certificate signed by ServerCA but without extended key usage extension, which pykmip requires: it
	// passes the TLS handshake and is rejected at the KMIP level.
	NoClientAuthCert []byte
	NoClientAuthKey  []byte

	// ServerIPs are further addresses the server certificate names, besides 127.0.0.1.
	ServerIPs []net.IP

	// Dir holds server.conf, the certificates, the policy directory, the SQLite database (pykmip.db), the server
	// log (server.log) and pykmip-server's stdout/stderr (stdio.log).
	Dir string

	bin     string
	conf    string
	mu      sync.Mutex
	proc    *process
	clients *tls.Config // to probe readiness
}

type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited; it is reaped only after its group was killed
}

// Start writes a pykmip configuration to dir (created if needed), starts pykmip-server on a free loopback port and
// returns once it accepts mutual-TLS connections. The caller must call Stop.
func Start(ctx context.Context, dir string) (*Server, error) {
	return StartWithIPs(ctx, dir)
}

// StartWithIPs is Start with further IP addresses in the server certificate, for clients that reach the
// loopback server through a forwarder on another address.
func StartWithIPs(ctx context.Context, dir string, ips ...net.IP) (*Server, error) {
	bin, err := exec.LookPath(Binary)
	if err != nil {
		return nil, ErrNotInstalled
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, bin: bin, conf: filepath.Join(dir, "server.conf"), ServerIPs: ips}
	if err := s.setup(); err != nil {
		return nil, fmt.Errorf("kmiptest: set up %s: %w", dir, err)
	}
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Config returns a client configuration for the server, with the trusted client certificate.
func (s *Server) Config() kmip.Config {
	return kmip.Config{Endpoint: s.Endpoint, ServerCA: s.ServerCA, ClientCert: s.ClientCert, ClientKey: s.ClientKey}
}

// Stop stops pykmip-server and waits for it: SIGINT (pykmip ignores SIGTERM until its accept loop times out, after
// up to 10 s), then, after a bound, SIGKILL to its whole process group. It is idempotent.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	p := s.proc
	s.proc = nil
	return p.stop()
}

// Restart stops the server and starts it again on the same port, with the same certificates and database.
func (s *Server) Restart(ctx context.Context) error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.start(ctx)
}

func (s *Server) setup() error {
	if err := os.MkdirAll(filepath.Join(s.Dir, "policies"), 0o700); err != nil {
		return err
	}
	ca, caKey, err := newCert(nil, nil, "kmiptest CA", nil)
	if err != nil {
		return err
	}
	srv, srvKey, err := newCert(ca, caKey, "kmiptest server", s.ServerIPs, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return err
	}
	cli, cliKey, err := newCert(ca, caKey, ClientIdentity, nil, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return err
	}
	otherCA, otherCAKey, err := newCert(nil, nil, "kmiptest untrusted CA", nil)
	if err != nil {
		return err
	}
	other, otherKey, err := newCert(otherCA, otherCAKey, ClientIdentity, nil, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return err
	}
	noEKU, noEKUKey, err := newCert(ca, caKey, ClientIdentity, nil)
	if err != nil {
		return err
	}
	s.ServerCA, s.ClientCert, s.ClientKey = certPEM(ca), certPEM(cli), keyPEM(cliKey)
	s.NoClientAuthCert, s.NoClientAuthKey = certPEM(noEKU), keyPEM(noEKUKey)
	s.UntrustedCA, s.UntrustedClientCert, s.UntrustedClientKey = certPEM(otherCA), certPEM(other), keyPEM(otherKey)

	port, err := freePort()
	if err != nil {
		return err
	}
	s.Endpoint = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	// pykmip's [server] section. auth_suite TLS1.2 makes it speak TLS 1.2 only, with ECDHE-ECDSA AES-GCM among its
	// ciphers (its RSA suites are CBC ones Go does not offer by default), hence the ECDSA server key.
	// logging_level INFO: DEBUG would log every request in hex, plaintext included.
	conf := fmt.Sprintf(`[server]
hostname=127.0.0.1
port=%d
certificate_path=%s
key_path=%s
ca_path=%s
auth_suite=TLS1.2
enable_tls_client_auth=True
policy_path=%s
database_path=%s
logging_level=INFO
`, port, s.path("server.pem"), s.path("server-key.pem"), s.path("ca.pem"), s.path("policies"), s.path("pykmip.db"))
	for name, data := range map[string][]byte{
		"ca.pem": s.ServerCA, "server.pem": certPEM(srv), "server-key.pem": keyPEM(srvKey), "server.conf": []byte(conf),
	} {
		if err := os.WriteFile(s.path(name), data, 0o600); err != nil {
			return err
		}
	}
	cert, err := tls.X509KeyPair(s.ClientCert, s.ClientKey)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	s.clients = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	return nil
}

func (s *Server) path(name string) string { return filepath.Join(s.Dir, name) }

func (s *Server) start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return errors.New("kmiptest: server already running")
	}
	stdio, err := os.OpenFile(s.path("stdio.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer stdio.Close()
	var logStart int64
	if fi, err := os.Stat(s.path("server.log")); err == nil {
		logStart = fi.Size()
	}
	// The log file must be given on the command line: it is not a config file setting, and the default is
	// /var/log/pykmip/server.log.
	cmd := exec.Command(s.bin, "-f", s.conf, "-l", s.path("server.log"))
	cmd.Dir, cmd.Stdout, cmd.Stderr = s.Dir, stdio, stdio
	// Own process group: pykmip-server forks helpers (a multiprocessing manager, the policy monitor) that Stop kills
	// with it. If this process dies without calling Stop, Pdeathsig kills pykmip-server, but not its helpers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("kmiptest: start %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		waitExited(cmd.Process.Pid)
		close(p.exited)
	}()
	if err := s.waitReady(ctx, p, logStart); err != nil {
		_ = p.stop()
		return err
	}
	s.proc = p
	return nil
}

// startupFailed reports whether pykmip-server logged a fatal error since its log had logStart bytes. Such errors (e.g.
// the port is taken) do not end pykmip-server quickly: it first shuts down, which takes tens of seconds.
func (s *Server) startupFailed(logStart int64) bool {
	log, _ := os.ReadFile(s.path("server.log"))
	stdio, _ := os.ReadFile(s.path("stdio.log"))
	return int64(len(log)) > logStart && bytes.Contains(log[logStart:], []byte(" - kmip.server - ERROR - ")) ||
		bytes.Contains(stdio, []byte("Traceback (most recent call last)"))
}

// waitReady polls until the server completes a mutual-TLS handshake.
func (s *Server) waitReady(ctx context.Context, p *process, logStart int64) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	delay := 10 * time.Millisecond
	for {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: time.Second}, Config: s.clients}
		conn, err := d.DialContext(ctx, "tcp", s.Endpoint)
		if err == nil {
			return conn.Close()
		}
		if s.startupFailed(logStart) {
			return fmt.Errorf("kmiptest: %s failed during startup:\n%s", Binary, s.logTail())
		}
		select {
		case <-p.exited:
			return fmt.Errorf("kmiptest: %s exited during startup:\n%s", Binary, s.logTail())
		case <-ctx.Done():
			return fmt.Errorf("kmiptest: %s not accepting TLS on %s (last error: %v): %w\n%s", Binary, s.Endpoint, err, ctx.Err(), s.logTail())
		case <-time.After(delay):
			delay = min(2*delay, 200*time.Millisecond)
		}
	}
}

// logTail returns the last lines of pykmip's log and of its stdout/stderr.
func (s *Server) logTail() string {
	var b bytes.Buffer
	for _, name := range []string{"server.log", "stdio.log"} {
		data, _ := os.ReadFile(s.path(name))
		lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
		lines = lines[max(0, len(lines)-20):]
		fmt.Fprintf(&b, "--- tail of %s:\n%s\n", s.path(name), bytes.Join(lines, []byte("\n")))
	}
	return b.String()
}

func (p *process) stop() error {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
	case <-time.After(stopGrace):
	}
	// The process has not been reaped yet, so its process group id is still ours: kill what is left of the group.
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
	// SIGKILL takes effect asynchronously; make sure no helper process of the group is still running.
	for i := 0; GroupSize(p.cmd.Process.Pid) > 0 && i < 500; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	var exitErr *exec.ExitError
	if err := p.cmd.Wait(); err != nil && !errors.As(err, &exitErr) {
		return fmt.Errorf("kmiptest: wait for %s: %w", Binary, err)
	}
	return nil
}

// waitExited blocks until the process pid has exited, without reaping it (waitid with WNOWAIT).
func waitExited(pid int) {
	const pPID, wEXITED, wNOWAIT = 1, 4, 0x1000000
	var info [128]byte // siginfo_t
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid), uintptr(unsafe.Pointer(&info[0])), wEXITED|wNOWAIT, 0, 0)
		if errno != syscall.EINTR {
			return
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// newCert creates an ECDSA P-256 certificate: a self-signed CA if parent is nil, else a leaf with the given
// extended key usages (and IP SAN 127.0.0.1 for servers).
func newCert(parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, ips []net.IP, eku ...x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		BasicConstraintsValid: true,
	}
	if parent == nil {
		tmpl.IsCA, tmpl.KeyUsage = true, x509.KeyUsageCertSign|x509.KeyUsageCRLSign
		parent, parentKey = tmpl, key
	} else {
		tmpl.KeyUsage, tmpl.ExtKeyUsage = x509.KeyUsageDigitalSignature, eku
		if slices.Contains(eku, x509.ExtKeyUsageServerAuth) {
			tmpl.IPAddresses = append([]net.IP{net.IPv4(127, 0, 0, 1)}, ips...)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func keyPEM(k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err) // cannot happen for a P-256 key
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// GroupSize counts the live (not zombie) processes of a process group, from /proc.
func GroupSize(pgid int) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) > 2 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			n++
		}
	}
	return n
}
