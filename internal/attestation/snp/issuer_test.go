package snp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"unsafe"
)

// fakeTSM emulates the kernel side of configfs-tsm on a temporary directory: creating an entry directory
// creates its attributes; writing inblob or privlevel increments the generation; reading outblob or auxblob
// after a write produces a new report from the entry's inblob and privlevel; removing the entry removes
// its attributes. The reporter under test works on the real files.
type fakeTSM struct {
	root     string
	provider string
	floor    uint32
	// respond produces outblob and auxblob for an inblob and privlevel, like the sev_guest provider.
	respond func(inblob []byte, privlevel uint32) (outblob, auxblob []byte, err error)
	// beforeRead, if set, runs before an attribute is read; tests use it to play a concurrent writer.
	beforeRead func(entry, attr string)

	mu        sync.Mutex
	generated map[string]uint64 // entry -> generation of the current outblob
	writes    []string
}

func newFakeTSM(t *testing.T, respond func([]byte, uint32) ([]byte, []byte, error)) *fakeTSM {
	return &fakeTSM{root: t.TempDir(), provider: "sev_guest", respond: respond, generated: map[string]uint64{}}
}

var tsmAttributes = []string{"inblob", "outblob", "auxblob", "generation", "provider", "privlevel", "privlevel_floor"}

func (f *fakeTSM) Mkdir(path string) error {
	if filepath.Dir(path) != f.root {
		return &fs.PathError{Op: "mkdir", Path: path, Err: syscall.EPERM}
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		return err
	}
	for _, a := range tsmAttributes {
		content := ""
		switch a {
		case "generation":
			content = "0\n"
		case "provider":
			content = f.provider + "\n"
		case "privlevel_floor":
			content = fmt.Sprintf("%d\n", f.floor)
		}
		if err := os.WriteFile(filepath.Join(path, a), []byte(content), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeTSM) Rmdir(path string) error {
	if filepath.Dir(path) != f.root {
		return &fs.PathError{Op: "rmdir", Path: path, Err: syscall.EPERM}
	}
	if _, err := os.Stat(path); err != nil {
		return err
	}
	return os.RemoveAll(path)
}

func (f *fakeTSM) generation(entry string) uint64 {
	b, _ := os.ReadFile(filepath.Join(entry, "generation"))
	g, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return g
}

// bump increments the generation of entry, as every write to inblob or privlevel does.
func (f *fakeTSM) bump(entry string) {
	g := f.generation(entry) + 1
	_ = os.WriteFile(filepath.Join(entry, "generation"), []byte(fmt.Sprintf("%d\n", g)), 0o600)
}

func (f *fakeTSM) WriteFile(path string, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	entry, attr := filepath.Dir(path), filepath.Base(path)
	if _, err := os.Stat(path); err != nil {
		return err
	}
	switch attr {
	case "inblob":
		if len(data) > 64 {
			return &fs.PathError{Op: "write", Path: path, Err: syscall.EINVAL}
		}
	case "privlevel":
		v, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 32)
		if err != nil || v > 3 || uint32(v) < f.floor {
			return &fs.PathError{Op: "write", Path: path, Err: syscall.EINVAL}
		}
	default:
		return &fs.PathError{Op: "write", Path: path, Err: syscall.EACCES}
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	f.writes = append(f.writes, attr+"="+string(data))
	f.bump(entry)
	return nil
}

func (f *fakeTSM) ReadFile(path string) ([]byte, error) {
	entry, attr := filepath.Dir(path), filepath.Base(path)
	if f.beforeRead != nil {
		f.beforeRead(entry, attr)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch attr {
	case "inblob", "privlevel":
		return nil, &fs.PathError{Op: "read", Path: path, Err: syscall.EACCES}
	case "outblob", "auxblob":
		if g := f.generation(entry); f.generated[entry] != g {
			inblob, _ := os.ReadFile(filepath.Join(entry, "inblob"))
			if len(inblob) != ReportDataSize {
				return nil, &fs.PathError{Op: "read", Path: path, Err: syscall.EINVAL}
			}
			pl, _ := os.ReadFile(filepath.Join(entry, "privlevel"))
			privlevel, _ := strconv.ParseUint(strings.TrimSpace(string(pl)), 10, 32)
			out, aux, err := f.respond(inblob, uint32(privlevel))
			if err != nil {
				return nil, &fs.PathError{Op: "read", Path: path, Err: err}
			}
			if err := os.WriteFile(filepath.Join(entry, "outblob"), out, 0o600); err != nil {
				return nil, err
			}
			if err := os.WriteFile(filepath.Join(entry, "auxblob"), aux, 0o600); err != nil {
				return nil, err
			}
			f.generated[entry] = g
		}
	}
	return os.ReadFile(path)
}

func (f *fakeTSM) entries(t *testing.T) []os.DirEntry {
	t.Helper()
	e, err := os.ReadDir(f.root)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// genuineResponder answers like a Milan host with the recorded report and its certificate table. It
// returns the recorded report whatever the inblob: a reporter must notice when REPORT_DATA differs.
func genuineResponder(t *testing.T) func([]byte, uint32) ([]byte, []byte, error) {
	raw := readTestdata(t, "attestation.bin")
	table := MarshalCertTable(genuineCerts(t))
	return func([]byte, uint32) ([]byte, []byte, error) { return raw, table, nil }
}

// signingResponder answers with a fresh report of the test PKI for the inblob and privlevel.
func signingResponder(t *testing.T) func([]byte, uint32) ([]byte, []byte, error) {
	pki := getTestPKI(t, Milan)
	cert, key := pki.endorsementKey(t, ekOptions{tcb: defaultTestTCB})
	table := MarshalCertTable(&Certificates{VCEK: cert, Intermediate: pki.ask, ARK: pki.ark})
	return func(inblob []byte, privlevel uint32) ([]byte, []byte, error) {
		o := reportOptions{product: Milan, tcb: defaultTestTCB, vmpl: privlevel, reportData: [64]byte(inblob), measurement: [48]byte{7}}
		return signReport(t, buildReport(t, o), key), table, nil
	}
}

func TestConfigFSGenuine(t *testing.T) {
	f := newFakeTSM(t, genuineResponder(t))
	rep := &ConfigFSReporter{Root: f.root, fs: f}
	genuine := mustParse(t, readTestdata(t, "attestation.bin"))

	ev, err := rep.Report(context.Background(), genuine.ReportData)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.entries(t)) != 0 {
		t.Error("the report entry was not removed")
	}
	if f.writes[0] != "inblob="+string(genuine.ReportData[:]) {
		t.Errorf("writes %q", f.writes)
	}
	certs, err := ParseCertTable(ev.CertTable)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Validate(genuineVerifier(t), genuinePolicy(t), ev.Report, certs); err != nil {
		t.Errorf("evidence from the configfs reporter: %v", err)
	}

	// A host that answers with a report for other REPORT_DATA is caught.
	_, err = rep.Report(context.Background(), [64]byte{9})
	if err == nil || !strings.Contains(err.Error(), "does not carry the requested REPORT_DATA") {
		t.Errorf("report for other REPORT_DATA: %v", err)
	}
	if len(f.entries(t)) != 0 {
		t.Error("the report entry was not removed after an error")
	}
}

func TestConfigFSRoundTrip(t *testing.T) {
	f := newFakeTSM(t, signingResponder(t))
	vmpl := uint32(2)
	rep := &ConfigFSReporter{Root: f.root, Privlevel: &vmpl, fs: f}
	nonce := []byte("fresh nonce of the verifier 0123")
	rd := ReportDataForNonce(testVariant, nonce, []byte("user data"))
	ev, err := rep.Report(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.writes) != 2 || f.writes[0] != "privlevel=2" {
		t.Errorf("writes %q, want privlevel then inblob", f.writes)
	}
	certs, err := ParseCertTable(ev.CertTable)
	if err != nil {
		t.Fatal(err)
	}
	p := testPolicy(reportOptions{reportData: rd, measurement: [48]byte{7}})
	p.VMPL = 2
	if _, err := Validate(testVerifier(t, testRoots(t, Milan), nil), p, ev.Report, certs); err != nil {
		t.Errorf("round trip: %v", err)
	}
	p.ReportData = HexBytes(mustSlice(ReportDataForNonce(testVariant, []byte("another nonce of the verifier 01"), []byte("user data"))))
	if _, err := Validate(testVerifier(t, testRoots(t, Milan), nil), p, ev.Report, certs); !errors.Is(err, ErrReportData) {
		t.Errorf("other nonce: %v", err)
	}
}

func mustSlice(a [ReportDataSize]byte) []byte { return a[:] }

func TestConfigFSGenerationRace(t *testing.T) {
	// Another writer changes the entry once, between our write and our read: the reporter asks again.
	f := newFakeTSM(t, signingResponder(t))
	interfered := 0
	f.beforeRead = func(entry, attr string) {
		if attr == "outblob" && interfered == 0 {
			interfered++
			_ = f.WriteFile(filepath.Join(entry, "inblob"), make([]byte, 64))
		}
	}
	rep := &ConfigFSReporter{Root: f.root, fs: f}
	rd := [64]byte{1, 2, 3}
	ev, err := rep.Report(context.Background(), rd)
	if err != nil {
		t.Fatalf("one interference: %v", err)
	}
	if mustParse(t, ev.Report).ReportData != rd {
		t.Error("returned the other writer's report")
	}

	// Persistent interference fails with ErrGenerationRace and never returns the other writer's report.
	f.beforeRead = func(entry, attr string) {
		if attr == "auxblob" {
			_ = f.WriteFile(filepath.Join(entry, "inblob"), make([]byte, 64))
		}
	}
	if _, err := rep.Report(context.Background(), rd); !errors.Is(err, ErrGenerationRace) {
		t.Errorf("persistent interference: %v", err)
	}
	if len(f.entries(t)) != 0 {
		t.Error("the report entry was not removed")
	}
}

func TestConfigFSErrors(t *testing.T) {
	t.Run("TDX provider", func(t *testing.T) {
		f := newFakeTSM(t, signingResponder(t))
		f.provider = "tdx_guest"
		_, err := (&ConfigFSReporter{Root: f.root, fs: f}).Report(context.Background(), [64]byte{})
		if err == nil || !strings.Contains(err.Error(), `provider is "tdx_guest"`) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("privlevel below floor", func(t *testing.T) {
		f := newFakeTSM(t, signingResponder(t))
		f.floor = 1
		zero := uint32(0)
		_, err := (&ConfigFSReporter{Root: f.root, Privlevel: &zero, fs: f}).Report(context.Background(), [64]byte{})
		if !errors.Is(err, syscall.EINVAL) || len(f.entries(t)) != 0 {
			t.Errorf("got %v", err)
		}
	})
	t.Run("truncated outblob", func(t *testing.T) {
		f := newFakeTSM(t, func(in []byte, _ uint32) ([]byte, []byte, error) {
			return readTestdata(t, "attestation.bin")[:1000], nil, nil
		})
		_, err := (&ConfigFSReporter{Root: f.root, fs: f}).Report(context.Background(), [64]byte{})
		if !errors.Is(err, ErrMalformedReport) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("firmware error", func(t *testing.T) {
		f := newFakeTSM(t, func([]byte, uint32) ([]byte, []byte, error) { return nil, nil, syscall.EIO })
		_, err := (&ConfigFSReporter{Root: f.root, fs: f}).Report(context.Background(), [64]byte{})
		if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "outblob") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("no configfs", func(t *testing.T) {
		_, err := (&ConfigFSReporter{Root: filepath.Join(t.TempDir(), "missing")}).Report(context.Background(), [64]byte{})
		if err == nil || !strings.Contains(err.Error(), "configfs-tsm report directory") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		f := newFakeTSM(t, signingResponder(t))
		if _, err := (&ConfigFSReporter{Root: f.root, fs: f}).Report(ctx, [64]byte{}); !errors.Is(err, context.Canceled) {
			t.Errorf("got %v", err)
		}
	})
}

// fakeGuestDevice answers SNP_GET_EXT_REPORT like the sev-guest driver: it asks for a larger certificate
// buffer first if the table does not fit.
type fakeGuestDevice struct {
	report func(rd [64]byte, vmpl uint32) []byte
	table  []byte
	status uint32
	calls  int
	closed bool
}

func (d *fakeGuestDevice) extReport(rd [ReportDataSize]byte, vmpl uint32, certs []byte) (*snpReportResp, uint32, uint64, error) {
	d.calls++
	need := (len(d.table) + pageSize - 1) / pageSize * pageSize
	if len(certs) < need {
		return nil, uint32(need), uint64(vmmErrInvalidLen) << 32, syscall.EIO
	}
	copy(certs, d.table)
	resp := &snpReportResp{}
	binary.LittleEndian.PutUint32(resp.Data[0:], d.status)
	binary.LittleEndian.PutUint32(resp.Data[4:], ReportSize)
	copy(resp.Data[msgReportRspHeader:], d.report(rd, vmpl))
	return resp, uint32(len(certs)), 0, nil
}

func (d *fakeGuestDevice) Close() error { d.closed = true; return nil }

func TestDeviceReporter(t *testing.T) {
	respond := signingResponder(t)
	_, table, _ := respond(make([]byte, 64), 0)
	// A table larger than the first buffer forces the driver's "invalid length" answer.
	big := append(append([]byte(nil), table...), make([]byte, 5*pageSize)...)
	dev := &fakeGuestDevice{table: big, report: func(rd [64]byte, vmpl uint32) []byte {
		out, _, _ := respond(rd[:], vmpl)
		return out
	}}
	rep := &DeviceReporter{VMPL: 1, open: func(path string) (guestDevice, error) {
		if path != DefaultSevGuestDevice {
			t.Errorf("opened %s", path)
		}
		return dev, nil
	}}
	rd := [64]byte{0x77}
	ev, err := rep.Report(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if dev.calls != 2 || !dev.closed {
		t.Errorf("%d calls, closed %v", dev.calls, dev.closed)
	}
	if len(ev.CertTable)%pageSize != 0 {
		t.Errorf("certificate buffer of %d bytes", len(ev.CertTable))
	}
	certs, err := ParseCertTable(ev.CertTable)
	if err != nil {
		t.Fatal(err)
	}
	p := testPolicy(reportOptions{reportData: rd, measurement: [48]byte{7}})
	p.VMPL = 1
	if _, err := Validate(testVerifier(t, testRoots(t, Milan), nil), p, ev.Report, certs); err != nil {
		t.Error(err)
	}

	dev.status = 0x16
	if _, err := rep.Report(context.Background(), rd); err == nil || !strings.Contains(err.Error(), "status 0x16") {
		t.Errorf("firmware status: %v", err)
	}
	dev.status = 0
	dev.report = func([64]byte, uint32) []byte { return readTestdata(t, "attestation.bin") }
	if _, err := rep.Report(context.Background(), rd); err == nil || !strings.Contains(err.Error(), "REPORT_DATA") {
		t.Errorf("report for other REPORT_DATA: %v", err)
	}
	failing := &DeviceReporter{Path: "/nonexistent/sev-guest"}
	if _, err := failing.Report(context.Background(), rd); err == nil || !strings.Contains(err.Error(), "/nonexistent/sev-guest") {
		t.Errorf("missing device: %v", err)
	}
}

// TestSevGuestABI checks the sizes of the ioctl structures against the Linux UAPI.
func TestSevGuestABI(t *testing.T) {
	for name, tc := range map[string][2]uintptr{
		"snp_report_req":          {unsafe.Sizeof(snpReportReq{}), 96},
		"snp_ext_report_req":      {unsafe.Sizeof(snpExtReportReq{}), 112},
		"snp_report_resp":         {unsafe.Sizeof(snpReportResp{}), 4000},
		"snp_guest_request_ioctl": {unsafe.Sizeof(snpGuestRequestIoctl{}), 32},
	} {
		if tc[0] != tc[1] {
			t.Errorf("%s: %d bytes, want %d", name, tc[0], tc[1])
		}
	}
	if snpGetExtReport != 0xc0205302 {
		t.Errorf("SNP_GET_EXT_REPORT = %#x", snpGetExtReport)
	}
	if unsafe.Offsetof(snpExtReportReq{}.CertsAddress) != 96 || unsafe.Offsetof(snpGuestRequestIoctl{}.ReqData) != 8 {
		t.Error("field offsets differ from the UAPI")
	}
}
