package swtpm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-tpm/legacy/tpm2"
)

const (
	stateFile  = "tpm2-00.permall" // swtpm's permanent TPM 2.0 state in a dir backend
	sockFile   = "swtpm.sock"
	ctrlFile   = "swtpm.sock.ctrl" // where tpm2-tss's swtpm TCTI (path=...swtpm.sock) looks for it
	maxSunPath = 107               // sizeof(sockaddr_un.sun_path) - 1 on Linux

	startTimeout = 30 * time.Second // bound for Start if ctx has no earlier deadline
	ioTimeout    = 10 * time.Second // per shutdown/control exchange in Close
)

// Control channel commands (swtpm's tpm_ioctl.h; all fields big-endian).
const (
	cmdShutdown = 0x03
	cmdGetInfo  = 0x12

	infoTPMSpecification = 1 // CMD_GET_INFO flags
	infoTPMAttributes    = 2
)

// TPM is a running swtpm process serving TPM 2.0 commands on a unix socket.
type TPM struct {
	sock, ctrl string

	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd.Wait returned
	waitErr error         // valid after exited is closed
	output  *syncBuffer   // swtpm's stdout and stderr

	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// Start runs swtpm on the manufactured TPM state in stateDir, serving TPM commands on
// stateDir/swtpm.sock and its control channel on stateDir/swtpm.sock.ctrl. swtpm sends
// TPM2_Startup(CLEAR) itself. ctx bounds only the start-up; the process runs until Close.
func Start(ctx context.Context, stateDir string) (*TPM, error) {
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	if err := checkOptionPath(stateDir); err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	if _, err := os.Stat(stateDir); err != nil {
		return nil, fmt.Errorf("starting swtpm: TPM state directory: %w", err)
	}
	if _, err := os.Stat(filepath.Join(stateDir, stateFile)); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("starting swtpm: no TPM state in %s (missing %s; run Manufacture first)", stateDir, stateFile)
	} else if err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	t := &TPM{
		sock:   filepath.Join(stateDir, sockFile),
		ctrl:   filepath.Join(stateDir, ctrlFile),
		exited: make(chan struct{}),
		output: &syncBuffer{},
		conns:  map[*trackedConn]struct{}{},
	}
	for _, p := range []string{t.sock, t.ctrl} {
		if len(p) > maxSunPath {
			return nil, fmt.Errorf("starting swtpm: socket path %s is longer than %d bytes", p, maxSunPath)
		}
		if err := removeStaleSocket(p); err != nil {
			return nil, fmt.Errorf("starting swtpm: %w", err)
		}
	}
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}

	t.cmd = exec.Command(bin, "socket", "--tpm2",
		"--tpmstate", "dir="+stateDir,
		"--server", "type=unixio,mode=0600,path="+t.sock,
		"--ctrl", "type=unixio,mode=0600,path="+t.ctrl,
		"--flags", "not-need-init,startup-clear",
	)
	t.cmd.Stdout, t.cmd.Stderr = t.output, t.output
	configureCmd(t.cmd, syscall.SIGTERM)
	if err := t.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	go func() {
		t.waitErr = t.cmd.Wait()
		close(t.exited)
	}()

	if err := t.waitReady(ctx); err != nil {
		select {
		case <-t.exited:
		default:
			_ = t.cmd.Process.Kill()
			<-t.exited
		}
		t.removeSockets()
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	return t, nil
}

// waitReady polls with exponential backoff until both sockets accept connections.
func (t *TPM) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	delay := 2 * time.Millisecond
	for {
		if dialable(t.sock) && dialable(t.ctrl) {
			return nil
		}
		timer := time.NewTimer(delay)
		select {
		case <-t.exited:
			timer.Stop()
			return fmt.Errorf("swtpm exited early (%v): %s", t.waitErr, t.output.String())
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("waiting for %s: %w; swtpm output: %s", t.sock, ctx.Err(), t.output.String())
		case <-timer.C:
		}
		delay = min(2*delay, 250*time.Millisecond)
	}
}

// SocketPath returns the path of the unix socket serving TPM commands.
func (t *TPM) SocketPath() string { return t.sock }

// Dial opens a connection for one client to the TPM command socket; go-tpm's legacy tpm2
// functions and go-tpm-tools' client accept it as io.ReadWriter. swtpm serves one connection
// at a time: commands on a second connection wait until the first one is closed.
// Close closes connections that are still open.
func (t *TPM) Dial() (net.Conn, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, errors.New("dialing swtpm: TPM is closed")
	}
	c, err := dialUnix(t.sock)
	if err != nil {
		return nil, fmt.Errorf("dialing swtpm: %w", err)
	}
	tc := &trackedConn{Conn: c, t: t}
	t.conns[tc] = struct{}{}
	return tc, nil
}

// Close stops the TPM cleanly: it closes open client connections, sends TPM2_Shutdown(CLEAR)
// so that the next start is not counted as a dictionary attack (after a few unclean stops every
// authorized command fails with TPM_RC_LOCKOUT), stops swtpm via its control channel (SIGTERM as
// fallback), waits for the process to exit and removes the sockets. Close is idempotent.
func (t *TPM) Close() error {
	t.closeOnce.Do(func() { t.closeErr = t.stop() })
	return t.closeErr
}

func (t *TPM) stop() error {
	t.mu.Lock()
	t.closed = true
	conns := t.conns
	t.conns = nil
	t.mu.Unlock()
	for c := range conns {
		_ = c.Conn.Close()
	}
	defer t.removeSockets()

	select {
	case <-t.exited:
		return fmt.Errorf("stopping swtpm: process had already exited (%v): %s", t.waitErr, t.output.String())
	default:
	}
	var errs []error
	if err := t.shutdownTPM(); err != nil {
		errs = append(errs, fmt.Errorf("sending TPM2_Shutdown: %w", err))
	}
	if err := t.control(cmdShutdown, nil, nil); err != nil {
		errs = append(errs, fmt.Errorf("sending CMD_SHUTDOWN: %w", err))
		_ = t.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-t.exited:
		if t.waitErr != nil {
			errs = append(errs, fmt.Errorf("swtpm exited with %w: %s", t.waitErr, t.output.String()))
		}
	case <-time.After(ioTimeout):
		_ = t.cmd.Process.Kill()
		<-t.exited
		errs = append(errs, errors.New("swtpm did not exit and was killed"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stopping swtpm: %w", err)
	}
	return nil
}

func (t *TPM) shutdownTPM() error {
	c, err := dialUnix(t.sock)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		return err
	}
	return tpm2.Shutdown(c, tpm2.StartupClear)
}

// control sends one command on the control channel and checks the TPM result code that starts
// every response; readRest, if set, reads the remainder of the response.
func (t *TPM) control(cmd uint32, payload []byte, readRest func(io.Reader) error) error {
	c, err := dialUnix(t.ctrl)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		return err
	}
	// One write: swtpm reads a control request with a single read(2).
	if _, err := c.Write(append(binary.BigEndian.AppendUint32(nil, cmd), payload...)); err != nil {
		return err
	}
	var res uint32
	if err := binary.Read(c, binary.BigEndian, &res); err != nil {
		return fmt.Errorf("reading control response: %w", err)
	}
	if res != 0 {
		return fmt.Errorf("control command 0x%02x failed with TPM result 0x%x", cmd, res)
	}
	if readRest != nil {
		return readRest(c)
	}
	return nil
}

// info returns the JSON document of CMD_GET_INFO for the given flags, as swtpm_ioctl --info prints it.
func (t *TPM) info(flags uint64) ([]byte, error) {
	req := binary.BigEndian.AppendUint64(nil, flags)
	req = binary.BigEndian.AppendUint32(req, 0) // offset
	req = binary.BigEndian.AppendUint32(req, 0) // pad
	var buf []byte
	err := t.control(cmdGetInfo, req, func(r io.Reader) error {
		var hdr struct{ TotLength, Length uint32 }
		if err := binary.Read(r, binary.BigEndian, &hdr); err != nil {
			return err
		}
		if hdr.Length > 1<<20 {
			return fmt.Errorf("implausible info length %d", hdr.Length)
		}
		buf = make([]byte, hdr.Length)
		_, err := io.ReadFull(r, buf)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("getting swtpm info: %w", err)
	}
	return bytes.TrimRight(buf, "\x00"), nil
}

func (t *TPM) removeSockets() {
	_ = os.Remove(t.sock) // swtpm may have removed them already
	_ = os.Remove(t.ctrl)
}

// removeStaleSocket removes a socket file left by a crashed swtpm, but refuses to touch one
// that a live process still serves.
func removeStaleSocket(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if dialable(path) {
		return fmt.Errorf("%s is served by another process (is swtpm already running on this state?)", path)
	}
	return os.Remove(path)
}

// dialable reports whether a process listens on the socket at path.
func dialable(path string) bool {
	c, err := net.Dial("unix", path)
	if err != nil {
		return errors.Is(err, syscall.EAGAIN) // listening, backlog full
	}
	c.Close()
	return true
}

// dialUnix connects to a swtpm socket. swtpm accepts one connection at a time and listens with
// a backlog of one, so connect fails with EAGAIN while earlier connections queue; dialUnix retries.
func dialUnix(path string) (net.Conn, error) {
	deadline := time.Now().Add(ioTimeout)
	for delay := time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		c, err := net.Dial("unix", path)
		if !errors.Is(err, syscall.EAGAIN) || time.Now().After(deadline) {
			return c, err
		}
		time.Sleep(delay)
	}
}

// checkOptionPath rejects paths that swtpm's comma-separated option syntax cannot express.
func checkOptionPath(p string) error {
	if strings.ContainsAny(p, ",\n") {
		return fmt.Errorf("path %q must not contain commas or newlines", p)
	}
	return nil
}

type trackedConn struct {
	net.Conn
	t *TPM
}

func (c *trackedConn) Close() error {
	c.t.mu.Lock()
	delete(c.t.conns, c)
	c.t.mu.Unlock()
	return c.Conn.Close()
}

// syncBuffer collects process output; it keeps at most the first 64 KiB.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := 64<<10 - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.TrimSpace(b.buf.String())
}

// StopOrphan cleanly stops a swtpm that serves stateDir but whose owner died (so no TPM value exists for it):
// TPM2_Shutdown first, so that the stop does not count as a dictionary-attack event, then CMD_SHUTDOWN. A state
// directory without a live server is left as it is.
func StopOrphan(stateDir string) error {
	t := &TPM{sock: filepath.Join(stateDir, sockFile), ctrl: filepath.Join(stateDir, ctrlFile)}
	if !dialable(t.ctrl) {
		t.removeSockets()
		return nil
	}
	var errs []error
	if err := t.shutdownTPM(); err != nil {
		errs = append(errs, fmt.Errorf("sending TPM2_Shutdown: %w", err))
	}
	if err := t.control(cmdShutdown, nil, nil); err != nil {
		errs = append(errs, fmt.Errorf("sending CMD_SHUTDOWN: %w", err))
	}
	for range 250 {
		if !dialable(t.ctrl) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.removeSockets()
	return errors.Join(errs...)
}
