package tdx

import (
	"bytes"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadCollateral(t *testing.T) {
	c, err := LoadCollateral(genuineCollDir(t))
	if err != nil {
		t.Fatal(err)
	}
	info, ok := c.tcbInfos[[6]byte{0x50, 0x80, 0x6f, 0, 0, 0}]
	if !ok || len(c.tcbInfos) != 1 {
		t.Fatalf("TCB infos: %v", c.tcbInfos)
	}
	if info.Version != 3 || info.TCBEvaluationDataNumber != 15 || len(info.TCBLevels) != 2 || info.TCBLevels[1].Status != TCBStatusOutOfDate || len(info.TCBLevels[1].AdvisoryIDs) != 13 {
		t.Errorf("TCB info = %+v", info)
	}
	if got := info.TCBLevels[0]; got.PCESVN != 11 || got.SGXComponents != [16]byte{5, 5, 2, 2, 3, 1, 0, 3} || got.TDXComponents != [16]byte{3, 0, 5} {
		t.Errorf("level 0 = %+v", got)
	}
	if !info.NextUpdate.Equal(time.Date(2023, time.July, 18, 8, 42, 58, 0, time.UTC)) {
		t.Errorf("next update %s", info.NextUpdate)
	}
	qe := c.qeIdentity
	if qe.ISVProdID != 2 || qe.MiscSelectMask != 0xffffffff || qe.Attributes[0] != 0x11 || qe.AttributesMask[0] != 0xfb || qe.MRSigner[0] != 0xdc || len(qe.TCBLevels) != 1 {
		t.Errorf("QE identity = %+v", qe)
	}
	if len(c.pckCRLs) != 1 || c.pckCRLs[PCKCAPlatform] == nil || len(c.signingChain) != 2 {
		t.Errorf("CRLs %v, signing chain %d", c.pckCRLs, len(c.signingChain))
	}

	copyDir := genuineCollDir
	for _, name := range []string{FileQEIdentity, FileTCBSigningChain, FileRootCACRL, FilePCKPlatformCRL, "tcb_info_50806f000000.json"} {
		dir := copyDir(t)
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadCollateral(dir); !errors.Is(err, ErrNoCollateral) {
			t.Errorf("without %s: LoadCollateral = %v, want ErrNoCollateral", name, err)
		}
	}

	// A TCB info under the name of another FMSPC.
	dir := copyDir(t)
	if err := os.Rename(filepath.Join(dir, "tcb_info_50806f000000.json"), filepath.Join(dir, "tcb_info_00906ed50000.json")); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCollateral(dir); !errors.Is(err, ErrMalformedCollateral) || !strings.Contains(err.Error(), "name it tcb_info_50806f000000.json") {
		t.Errorf("misnamed TCB info: %v", err)
	}

	// CRLs may be PEM; other files are ignored.
	dir = copyDir(t)
	der, err := os.ReadFile(filepath.Join(dir, FileRootCACRL))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, FileRootCACRL), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("fetched 2023-07-01"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = LoadCollateral(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(mustParseQuote(t, genuineQuote(t)), c, genuineTime); err != nil {
		t.Errorf("Verify with a PEM root CRL: %v", err)
	}

	if _, err := LoadCollateral(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("LoadCollateral of a missing directory succeeded")
	}
}

func TestParseCollateralErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(f *CollateralFiles)
		target error
		want   string
	}{
		{"no TCB info", func(f *CollateralFiles) { f.TCBInfos = nil }, ErrNoCollateral, "no TCB info"},
		{"two TCB infos for an FMSPC", func(f *CollateralFiles) { f.TCBInfos = append(f.TCBInfos, f.TCBInfos[0]) }, ErrMalformedCollateral, "two TCB infos for FMSPC 50806f000000"},
		{"no QE identity", func(f *CollateralFiles) { f.QEIdentity = nil }, ErrNoCollateral, "QE identity"},
		{"no signing chain", func(f *CollateralFiles) { f.TCBSigningChain = nil }, ErrNoCollateral, "TCB signing certificate chain"},
		{"junk signing chain", func(f *CollateralFiles) { f.TCBSigningChain = []byte("junk") }, ErrMalformedCollateral, "4 bytes that are not a PEM certificate"},
		{"empty signing chain", func(f *CollateralFiles) { f.TCBSigningChain = []byte("\n") }, ErrMalformedCollateral, "no PEM certificate"},
		{"no root CRL", func(f *CollateralFiles) { f.RootCACRL = nil }, ErrNoCollateral, "root CA CRL"},
		{"junk root CRL", func(f *CollateralFiles) { f.RootCACRL = []byte("junk") }, ErrMalformedCollateral, "root CA CRL"},
		{"PEM root CRL of another type", func(f *CollateralFiles) {
			f.RootCACRL = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.RootCACRL})
		}, ErrMalformedCollateral, "want one PEM X509 CRL block or DER"},
		{"no PCK CRL", func(f *CollateralFiles) { f.PCKPlatformCRL = nil }, ErrNoCollateral, "no PCK CRL"},
		{"junk PCK CRL", func(f *CollateralFiles) { f.PCKProcessorCRL = []byte{0x30, 0} }, ErrMalformedCollateral, "PCK processor CRL"},
	} {
		f := genuineCollateralFiles(t)
		tc.mutate(&f)
		_, err := ParseCollateral(f)
		if !errors.Is(err, tc.target) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseCollateral = %v, want %v mentioning %q", tc.name, err, tc.target, tc.want)
		}
	}
}

func TestParseTCBInfoStrict(t *testing.T) {
	genuine := genuineCollateralFiles(t).TCBInfos[0]
	if _, err := ParseTCBInfo(genuine); err != nil {
		t.Fatal(err)
	}
	replace := func(old, new string) []byte {
		if !bytes.Contains(genuine, []byte(old)) {
			t.Fatalf("%q not in the genuine TCB info", old)
		}
		return bytes.Replace(genuine, []byte(old), []byte(new), 1)
	}
	for _, tc := range []struct {
		name string
		raw  []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"not JSON", []byte("tcbInfo"), "invalid character"},
		{"trailing data", append(bytes.Clone(genuine), "{}"...), "trailing data"},
		{"unknown envelope field", replace(`,"signature"`, `,"extra":1,"signature"`), `unknown field "extra"`},
		{"no tcbInfo", []byte(`{"signature":"00"}`), "no tcbInfo object"},
		{"SGX TCB info", replace(`"id":"TDX"`, `"id":"SGX"`), `id is "SGX"`},
		{"version 2", replace(`"version":3`, `"version":2`), "version 2 is not supported"},
		{"no version", replace(`"version":3,`, ``), "no version"},
		{"bad issue date", replace(`"issueDate":"2023-06-18T08:42:58Z"`, `"issueDate":"yesterday"`), "issueDate \"yesterday\" is not an RFC 3339 time"},
		{"next update before issue", replace(`"nextUpdate":"2023-07-18T08:42:58Z"`, `"nextUpdate":"2023-06-18T08:42:58Z"`), "nextUpdate 2023-06-18T08:42:58Z is not after issueDate"},
		{"short FMSPC", replace(`"fmspc":"50806f000000"`, `"fmspc":"50806f"`), "fmspc is \"50806f\", want 12 hex digits"},
		{"bad PCE ID", replace(`"pceId":"0000"`, `"pceId":"zz00"`), "pceId"},
		{"TCB type 1", replace(`"tcbType":0`, `"tcbType":1`), "tcbType 1 is not supported"},
		{"no TDX module", replace(`"tdxModule"`, `"tdxModuleX"`), "no tdxModule"},
		{"short module signer", replace(`"mrsigner":"0000`, `"mrsigner":"`), "tdxModule.mrsigner"},
		{"15 SGX components", replace(`,{"svn":0}],"pcesvn":11`, `],"pcesvn":11`), "tcbLevels[0].tcb.sgxtcbcomponents has 15 components, want 16"},
		{"missing SVN", replace(`{"svn":5,"category":"BIOS","type":"Early Microcode Update"}`, `{"category":"BIOS"}`), "no tcbLevels[0].tcb.sgxtcbcomponents[0].svn"},
		{"SVN above 255", replace(`{"svn":5,`, `{"svn":256,`), "sgxtcbcomponents[0].svn is 256, outside 0-255"},
		{"negative PCESVN", replace(`"pcesvn":11`, `"pcesvn":-1`), "pcesvn is -1"},
		{"SVN as string", replace(`{"svn":5,`, `{"svn":"5",`), "cannot unmarshal string"},
		{"unknown status", replace(`"tcbStatus":"UpToDate"`, `"tcbStatus":"Fine"`), `tcbLevels[0].tcbStatus "Fine" is not a known TCB status`},
		{"our own status", replace(`"tcbStatus":"UpToDate"`, `"tcbStatus":"NotSupported"`), "not a known TCB status"},
		{"no levels", []byte(`{"tcbInfo":{"id":"TDX","version":3,"issueDate":"2023-06-18T08:42:58Z","nextUpdate":"2023-07-18T08:42:58Z","fmspc":"50806f000000","pceId":"0000","tcbType":0,"tcbEvaluationDataNumber":15,"tdxModule":{"mrsigner":"` + strings.Repeat("00", 48) + `","attributes":"0000000000000000","attributesMask":"FFFFFFFFFFFFFFFF"},"tcbLevels":[]},"signature":"` + strings.Repeat("00", 64) + `"}`), "tcbLevels has 0 entries"},
		{"short signature", replace(`"signature":"f6`, `"signature":"`), "signature is not 128 hex digits"},
		{"bad module identity", replace(`"tcbLevels":[{"tcb"`, `"tdxModuleIdentities":[{"id":"TDX1","mrsigner":"`+strings.Repeat("00", 48)+`","attributes":"0000000000000000","attributesMask":"FFFFFFFFFFFFFFFF","tcbLevels":[{"tcb":{"isvsvn":1},"tcbDate":"2023-02-15T00:00:00Z","tcbStatus":"UpToDate"}]}],"tcbLevels":[{"tcb"`), `tdxModuleIdentities[0].id "TDX1"`},
		{"module identity without levels", replace(`"tcbLevels":[{"tcb"`, `"tdxModuleIdentities":[{"id":"TDX_01","mrsigner":"`+strings.Repeat("00", 48)+`","attributes":"0000000000000000","attributesMask":"FFFFFFFFFFFFFFFF","tcbLevels":[]}],"tcbLevels":[{"tcb"`), "tdxModuleIdentities[0].tcbLevels has 0 entries"},
	} {
		_, err := ParseTCBInfo(tc.raw)
		if !errors.Is(err, ErrMalformedCollateral) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseTCBInfo = %v, want %q", tc.name, err, tc.want)
		}
	}
	// Fields this verifier does not know, inside the signed object, are ignored.
	if _, err := ParseTCBInfo(replace(`"tcbType":0`, `"tcbType":0,"futureField":{"x":[1]}`)); err != nil {
		t.Errorf("unknown inner field: %v", err)
	}
	// A module identity is parsed.
	info, err := ParseTCBInfo(replace(`"tcbLevels":[{"tcb"`, `"tdxModuleIdentities":[{"id":"TDX_01","mrsigner":"`+strings.Repeat("00", 48)+`","attributes":"0000000000000000","attributesMask":"FFFFFFFFFFFFFFFF","tcbLevels":[{"tcb":{"isvsvn":2},"tcbDate":"2023-02-15T00:00:00Z","tcbStatus":"UpToDate"}]}],"tcbLevels":[{"tcb"`))
	if err != nil || len(info.TDXModuleIdentities) != 1 || info.TDXModuleIdentities[0].TCBLevels[0].ISVSVN != 2 || info.TDXModuleIdentities[0].AttributesMask[0] != 0xff {
		t.Errorf("module identity: %+v, %v", info, err)
	}
}

func TestParseQEIdentityStrict(t *testing.T) {
	genuine := genuineCollateralFiles(t).QEIdentity
	replace := func(old, new string) []byte {
		if !bytes.Contains(genuine, []byte(old)) {
			t.Fatalf("%q not in the genuine QE identity", old)
		}
		return bytes.Replace(genuine, []byte(old), []byte(new), 1)
	}
	for _, tc := range []struct {
		name string
		raw  []byte
		want string
	}{
		{"trailing data", append(bytes.Clone(genuine), ' ', '1'), "trailing data"},
		{"unknown envelope field", replace(`,"signature"`, `,"extra":1,"signature"`), `unknown field "extra"`},
		{"no identity", []byte(`{"signature":"00"}`), "no enclaveIdentity object"},
		{"SGX QE", replace(`"id":"TD_QE"`, `"id":"QE"`), `id is "QE"`},
		{"version 1", replace(`"version":2`, `"version":1`), "version 1 is not supported"},
		{"short miscselect", replace(`"miscselect":"00000000"`, `"miscselect":"00"`), "miscselect"},
		{"short attributes", replace(`"attributes":"11000000000000000000000000000000"`, `"attributes":"11"`), "attributes is \"11\", want 32 hex digits"},
		{"short MRSIGNER", replace(`"mrsigner":"DC9E`, `"mrsigner":"`), "mrsigner"},
		{"no ISVPRODID", replace(`"isvprodid":2,`, ``), "no isvprodid"},
		{"no levels", replace(`"tcbLevels":[{"tcb":{"isvsvn":4},"tcbDate":"2023-02-15T00:00:00Z","tcbStatus":"UpToDate"}]`, `"tcbLevels":[]`), "tcbLevels has 0 entries"},
		{"no ISVSVN", replace(`{"isvsvn":4}`, `{}`), "no tcbLevels[0].tcb.isvsvn"},
		{"bad TCB date", replace(`"tcbDate":"2023-02-15T00:00:00Z"`, `"tcbDate":"2023-02-15"`), "tcbLevels[0].tcbDate"},
	} {
		_, err := ParseQEIdentity(tc.raw)
		if !errors.Is(err, ErrMalformedCollateral) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseQEIdentity = %v, want %q", tc.name, err, tc.want)
		}
	}
	// MISCSELECT is a number, most significant digit first.
	id, err := ParseQEIdentity(replace(`"miscselectMask":"FFFFFFFF"`, `"miscselectMask":"000000FF"`))
	if err != nil || id.MiscSelectMask != 0xff {
		t.Errorf("miscselectMask: %+v, %v", id, err)
	}
}

func TestParsePCKExtension(t *testing.T) {
	q := mustParseQuote(t, genuineQuote(t))
	chain, err := parseCertChainPEM(q.PCKCertChain, "chain")
	if err != nil {
		t.Fatal(err)
	}
	info, err := parsePCKExtension(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	if info.FMSPC != [6]byte{0x50, 0x80, 0x6f} || info.PCEID != [2]byte{} || info.PCESVN != 11 || info.SGXType != 1 || len(info.PPID) != 16 {
		t.Errorf("PCK info %+v", info)
	}
	if _, err := parsePCKExtension(chain[1]); err == nil || !strings.Contains(err.Error(), "no SGX extension") {
		t.Errorf("CA certificate: %v", err)
	}

	p := newTestPKI(t)
	ext := sgxExtensionDER(t, p.fmspc, p.pceid, p.pckTCB, p.pcesvn)
	got, err := parseSGXExtension(ext)
	if err != nil || got.FMSPC != p.fmspc || got.TCBComponents != p.pckTCB || got.PCESVN != p.pcesvn || got.CPUSVN != p.pckTCB {
		t.Fatalf("test extension: %+v, %v", got, err)
	}
	for _, tc := range []struct {
		name string
		der  []byte
		want string
	}{
		{"trailing", append(bytes.Clone(ext), 0), "trailing bytes"},
		{"truncated", ext[:len(ext)-1], "PCK certificate SGX extension"},
		{"empty", nil, "PCK certificate SGX extension"},
		{"no FMSPC", mustMarshalFields(t, []asn1.RawValue{rawField(t, oidSGXPPID, make([]byte, 16))}), "no PCE-ID"},
		{"duplicate", mustMarshalFields(t, []asn1.RawValue{rawField(t, oidSGXPPID, make([]byte, 16)), rawField(t, oidSGXPPID, make([]byte, 16))}), "appears twice"},
		{"short PPID", mustMarshalFields(t, []asn1.RawValue{rawField(t, oidSGXPPID, make([]byte, 15))}), "PPID has 15 bytes, want 16"},
		{"PPID not octets", mustMarshalFields(t, []asn1.RawValue{rawField(t, oidSGXPPID, 5)}), "PPID is not an OCTET STRING"},
	} {
		if _, err := parseSGXExtension(tc.der); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func FuzzParseTCBInfo(f *testing.F) {
	f.Add(genuineCollateralFiles(f).TCBInfos[0])
	p := newTestPKI(f)
	tc := p.newCollateral()
	tc.moduleIDs = []map[string]any{{"id": "TDX_01", "mrsigner": strings.Repeat("00", 48), "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF", "tcbLevels": []map[string]any{svnLevel(2, "UpToDate")}}}
	f.Add(p.files(f, tc).TCBInfos[0])
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := ParseTCBInfo(data)
		if err != nil {
			if !errors.Is(err, ErrMalformedCollateral) {
				t.Fatalf("error does not wrap ErrMalformedCollateral: %v", err)
			}
			return
		}
		if len(info.TCBLevels) == 0 || len(info.signature) != ecdsaSignatureSize || !bytes.Contains(data, info.signed) {
			t.Fatalf("parsed an unusable TCB info: %+v", info)
		}
		for _, l := range info.TCBLevels {
			if !l.Status.known() {
				t.Fatalf("unknown status %q accepted", l.Status)
			}
		}
	})
}

func FuzzParseQEIdentity(f *testing.F) {
	f.Add(genuineCollateralFiles(f).QEIdentity)
	f.Fuzz(func(t *testing.T, data []byte) {
		id, err := ParseQEIdentity(data)
		if err != nil {
			return
		}
		if len(id.TCBLevels) == 0 || len(id.signature) != ecdsaSignatureSize || !bytes.Contains(data, id.signed) {
			t.Fatalf("parsed an unusable QE identity: %+v", id)
		}
	})
}

func FuzzParsePCKExtension(f *testing.F) {
	q := mustParseQuote(f, genuineQuote(f))
	chain, err := parseCertChainPEM(q.PCKCertChain, "chain")
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range chain[0].Extensions {
		if e.Id.Equal(oidSGXExtension) {
			f.Add(e.Value)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := parseSGXExtension(data)
		if err == nil && len(info.PPID) != 16 {
			t.Fatalf("PPID of %d bytes accepted", len(info.PPID))
		}
	})
}

func FuzzParseCertChainPEM(f *testing.F) {
	q := mustParseQuote(f, genuineQuote(f))
	f.Add(q.PCKCertChain)
	f.Add(genuineCollateralFiles(f).TCBSigningChain)
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := parseCertChainPEM(data, "chain")
		if err == nil && (len(certs) == 0 || len(certs) > maxChainCerts) {
			t.Fatalf("%d certificates accepted", len(certs))
		}
	})
}

func mustMarshalFields(t *testing.T, fields []asn1.RawValue) []byte {
	t.Helper()
	der, err := asn1.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
