package tdx

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"
)

func TestVerifyGenuineQuote(t *testing.T) {
	c, err := LoadCollateral(genuineCollDir(t))
	if err != nil {
		t.Fatal(err)
	}
	q := mustParseQuote(t, genuineQuote(t))
	v, err := Verify(q, c, genuineTime)
	if err != nil {
		t.Fatalf("Verify(genuine quote, genuine collateral) = %v", err)
	}
	if v.PCK.FMSPC != [6]byte{0x50, 0x80, 0x6f, 0, 0, 0} || v.PCK.CA != PCKCAPlatform || v.PCK.PCESVN != 11 {
		t.Errorf("PCK info = %+v", v.PCK)
	}
	if v.PCK.TCBComponents != [16]byte{3, 3, 2, 2, 2, 1, 0, 2} || v.PCK.CPUSVN != v.PCK.TCBComponents {
		t.Errorf("PCK TCB = %v, CPUSVN %v", v.PCK.TCBComponents, v.PCK.CPUSVN)
	}
	// Intel's TCB info lists two levels, both requiring SGX TCB component 1 >= 5 and TEE_TCB_SVN[2] >= 5;
	// this platform's PCK certificate has 3 and its TD report 4, so no level matches: Intel's data says
	// this platform's TCB is not supported. The quoting enclave (ISVSVN 4) is up to date.
	if v.TCB.Status != TCBStatusNotSupported || v.TCB.Platform != TCBStatusNotSupported || v.TCB.QE != TCBStatusUpToDate || v.TCB.Module != "" {
		t.Errorf("TCB = %+v", v.TCB)
	}
	if !strings.Contains(v.TCB.Reason, "level 0 (UpToDate, 2023-02-15): PCK SGX TCB component 1 is 3, the level needs 5") ||
		!strings.Contains(v.TCB.Reason, "level 1 (OutOfDate, 2018-01-04)") {
		t.Errorf("TCB reason = %q", v.TCB.Reason)
	}
	if v.TCB.TCBEvaluationDataNumber != 15 {
		t.Errorf("TCB evaluation data number = %d, want 15", v.TCB.TCBEvaluationDataNumber)
	}
	if want := time.Date(2023, time.July, 8, 7, 24, 59, 0, time.UTC); !c.NextUpdate().Equal(want) {
		t.Errorf("collateral next update = %s, want %s (QE identity)", c.NextUpdate(), want)
	}

	// The policy then refuses it, saying why, even with every measurement accepted.
	p := &Policy{MRTD: []HexBytes{q.Body.MRTD[:]}}
	err = p.WithReportData(q.Body.ReportData).Check(v)
	if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "TCB status NotSupported is not accepted (accepted: UpToDate): no TCB level") {
		t.Errorf("Check = %v", err)
	}
	// NotSupported cannot be accepted.
	p.AcceptedTCBStatuses = []TCBStatus{TCBStatusNotSupported}
	if err := p.Validate(); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("policy accepting NotSupported: %v", err)
	}
}

// TestVerifyGenuineTCBAtIntelsLevels raises the platform's SVNs in Intel's genuine TCB info matching, to
// show which status each genuine level gives.
func TestVerifyGenuineTCBLevels(t *testing.T) {
	c := mustParseCollateral(t, genuineCollateralFiles(t))
	info := c.tcbInfos[[6]byte{0x50, 0x80, 0x6f, 0, 0, 0}]
	q := mustParseQuote(t, genuineQuote(t))
	for _, tc := range []struct {
		name   string
		sgx    [16]byte
		pcesvn uint16
		tee    [16]byte
		want   TCBStatus
	}{
		{"at level 0", [16]byte{5, 5, 2, 2, 3, 1, 0, 3}, 11, [16]byte{3, 0, 5}, TCBStatusUpToDate},
		{"above level 0", [16]byte{15, 15, 12, 12, 13, 11, 10, 13, 10}, 20, [16]byte{13, 0, 15, 10}, TCBStatusUpToDate},
		{"PCESVN between the levels", [16]byte{5, 5, 2, 2, 3, 1, 0, 3}, 10, [16]byte{3, 0, 5}, TCBStatusOutOfDate},
		{"PCESVN below every level", [16]byte{5, 5, 2, 2, 3, 1, 0, 3}, 4, [16]byte{3, 0, 5}, TCBStatusNotSupported},
		{"TDX module SVN below", [16]byte{5, 5, 2, 2, 3, 1, 0, 3}, 11, [16]byte{2, 0, 5}, TCBStatusNotSupported},
		{"genuine platform", [16]byte{3, 3, 2, 2, 2, 1, 0, 2}, 11, [16]byte{3, 0, 4}, TCBStatusNotSupported},
	} {
		pck := &PCKInfo{TCBComponents: tc.sgx, PCESVN: tc.pcesvn}
		qq := *q
		qq.Body.TEETCBSVN = tc.tee
		ev, err := evaluateTCB(info, c.qeIdentity, pck, &qq)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if ev.Status != tc.want {
			t.Errorf("%s: status %s, want %s (%+v)", tc.name, ev.Status, tc.want, ev)
		}
		if tc.want == TCBStatusOutOfDate && len(ev.AdvisoryIDs) != 13 {
			t.Errorf("%s: advisories %v, want Intel's 13", tc.name, ev.AdvisoryIDs)
		}
	}
}

func TestVerifyGenuineCollateralTimes(t *testing.T) {
	c := mustParseCollateral(t, genuineCollateralFiles(t))
	q := mustParseQuote(t, genuineQuote(t))
	for _, tc := range []struct {
		name string
		now  time.Time
		want string
	}{
		{"after the QE identity and PCK CRL", time.Date(2023, time.July, 9, 0, 0, 0, 0, time.UTC), "PCK CRL expired at 2023-07-08T07:27:52Z"},
		{"after the TCB info", time.Date(2023, time.July, 20, 0, 0, 0, 0, time.UTC), "expired at 2023-07-08T07:27:52Z (verification time 2023-07-20T00:00:00Z): refresh the collateral cache"},
		{"before the TCB info", time.Date(2023, time.June, 10, 0, 0, 0, 0, time.UTC), "TCB info (FMSPC 50806f000000) was issued at 2023-06-18T08:42:58Z, after the verification time"},
		{"after the root CA CRL", time.Date(2024, time.April, 3, 0, 0, 0, 0, time.UTC), "root CA CRL expired at 2024-04-02T10:22:51Z"},
		{"after the TCB signing certificate", time.Date(2026, time.January, 1, 0, 0, 0, 0, time.UTC), "root CA CRL expired"},
	} {
		_, err := Verify(q, c, tc.now)
		if !errors.Is(err, ErrExpired) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Verify = %v, want ErrExpired mentioning %q", tc.name, err, tc.want)
		}
	}
	if _, err := Verify(q, c, time.Time{}); err == nil {
		t.Error("Verify without a time succeeded")
	}
}

// TestVerifyGenuineTCBInfoExpiry checks the expiry of the genuine TCB info and QE identity themselves:
// in Verify, the PCK CRL expires first and hides them.
func TestVerifyGenuineTCBInfoExpiry(t *testing.T) {
	c := mustParseCollateral(t, genuineCollateralFiles(t))
	key, err := c.verifySigner(IntelSGXRootCA(), genuineTime)
	if err != nil {
		t.Fatal(err)
	}
	info := c.tcbInfos[[6]byte{0x50, 0x80, 0x6f, 0, 0, 0}]
	if err := info.verify(key, genuineTime); err != nil {
		t.Fatal(err)
	}
	err = info.verify(key, time.Date(2023, time.July, 18, 8, 43, 0, 0, time.UTC))
	if !errors.Is(err, ErrExpired) || err.Error() != "TDX collateral: expired: TCB info (FMSPC 50806f000000) expired at 2023-07-18T08:42:58Z (verification time 2023-07-18T08:43:00Z): refresh the collateral cache" {
		t.Errorf("expired TCB info: %v", err)
	}
	if err := c.qeIdentity.verify(key, time.Date(2023, time.July, 8, 7, 25, 0, 0, time.UTC)); !errors.Is(err, ErrExpired) || !strings.Contains(err.Error(), "QE identity expired at 2023-07-08T07:24:59Z") {
		t.Errorf("expired QE identity: %v", err)
	}
}

// TestVerifyGenuineQuoteMutations flips one bit in every field of the genuine quote and checks which
// verification step rejects it.
func TestVerifyGenuineQuoteMutations(t *testing.T) {
	c := mustParseCollateral(t, genuineCollateralFiles(t))
	raw := genuineQuote(t)
	const (
		bodyOff   = headerSize
		sigOff    = headerSize + tdReport10Size + 4
		akOff     = sigOff + 64
		qeOff     = akOff + 64 + 6
		qeSigOff  = qeOff + enclaveReportSize
		authOff   = qeSigOff + 64 + 2
		chainOff  = authOff + 32 + 6
		quoteSig  = "signature over the header and TD report does not verify"
		qeSig     = "QE report signature does not verify"
		qeBinding = "QE report data is not SHA-256(attestation key || QE authentication data)"
	)
	fields := []struct {
		name       string
		off, size  int
		want       string
		wantTarget error
	}{
		{"header reserved", 8, 4, quoteSig, ErrInvalidSignature},
		{"header QE vendor ID", 12, 16, "QE vendor ID", ErrCollateralMismatch},
		{"header user data", 28, 20, quoteSig, ErrInvalidSignature},
		{"TEE_TCB_SVN", bodyOff, 16, quoteSig, ErrInvalidSignature},
		{"MRSEAM", bodyOff + 16, 48, quoteSig, ErrInvalidSignature},
		{"MRSIGNERSEAM", bodyOff + 64, 48, quoteSig, ErrInvalidSignature},
		{"SEAMATTRIBUTES", bodyOff + 112, 8, quoteSig, ErrInvalidSignature},
		{"TDATTRIBUTES", bodyOff + 120, 8, quoteSig, ErrInvalidSignature},
		{"XFAM", bodyOff + 128, 8, quoteSig, ErrInvalidSignature},
		{"MRTD", bodyOff + 136, 48, quoteSig, ErrInvalidSignature},
		{"MRCONFIGID", bodyOff + 184, 48, quoteSig, ErrInvalidSignature},
		{"MROWNER", bodyOff + 232, 48, quoteSig, ErrInvalidSignature},
		{"MROWNERCONFIG", bodyOff + 280, 48, quoteSig, ErrInvalidSignature},
		{"RTMR0", bodyOff + 328, 48, quoteSig, ErrInvalidSignature},
		{"RTMR1", bodyOff + 376, 48, quoteSig, ErrInvalidSignature},
		{"RTMR2", bodyOff + 424, 48, quoteSig, ErrInvalidSignature},
		{"RTMR3", bodyOff + 472, 48, quoteSig, ErrInvalidSignature},
		{"REPORTDATA", bodyOff + 520, 64, quoteSig, ErrInvalidSignature},
		{"quote signature", sigOff, 64, quoteSig, ErrInvalidSignature},
		{"attestation key", akOff, 64, qeBinding, ErrInvalidSignature},
		{"QE CPUSVN", qeOff, 16, qeSig, ErrInvalidSignature},
		{"QE MISCSELECT", qeOff + 16, 4, qeSig, ErrInvalidSignature},
		{"QE reserved", qeOff + 20, 28, qeSig, ErrInvalidSignature},
		{"QE attributes", qeOff + 48, 16, qeSig, ErrInvalidSignature},
		{"QE MRENCLAVE", qeOff + 64, 32, qeSig, ErrInvalidSignature},
		{"QE MRSIGNER", qeOff + 128, 32, qeSig, ErrInvalidSignature},
		{"QE ISVPRODID", qeOff + 256, 2, qeSig, ErrInvalidSignature},
		{"QE ISVSVN", qeOff + 258, 2, qeSig, ErrInvalidSignature},
		{"QE report data", qeOff + 320, 64, qeSig, ErrInvalidSignature},
		{"QE report signature", qeSigOff, 64, qeSig, ErrInvalidSignature},
		{"QE authentication data", authOff, 32, qeBinding, ErrInvalidSignature},
	}
	for _, f := range fields {
		// First, middle and last byte of the field, one bit each.
		for _, i := range []int{f.off, f.off + f.size/2, f.off + f.size - 1} {
			b := bytes.Clone(raw)
			b[i] ^= 0x01
			q, err := ParseQuote(b)
			if err != nil {
				t.Fatalf("%s: byte %d: parse: %v", f.name, i, err)
			}
			_, err = Verify(q, c, genuineTime)
			if !errors.Is(err, f.wantTarget) || !strings.Contains(err.Error(), f.want) {
				t.Errorf("%s: flipping a bit of byte %d: Verify = %v, want %q", f.name, i, err, f.want)
			}
		}
	}

	// PCK certificate: change one base64 digit inside the PCK certificate's to-be-signed part.
	b := bytes.Clone(raw)
	i := chainOff + len("-----BEGIN CERTIFICATE-----\n") + 200
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	_, err := Verify(mustParseQuote(t, b), c, genuineTime)
	if !errors.Is(err, ErrUntrustedCertificate) || !strings.Contains(err.Error(), "does not chain to the Intel SGX Root CA") {
		t.Errorf("modified PCK certificate: Verify = %v", err)
	}
}

// TestVerifyGenuineCollateralTampered changes signed collateral and checks that the signature check
// catches it.
func TestVerifyGenuineCollateralTampered(t *testing.T) {
	q := mustParseQuote(t, genuineQuote(t))
	for _, tc := range []struct {
		name   string
		mutate func(f *CollateralFiles)
		target error
		want   string
	}{
		{"TCB info level status", func(f *CollateralFiles) {
			f.TCBInfos[0] = bytes.Replace(f.TCBInfos[0], []byte(`"tcbStatus":"OutOfDate"`), []byte(`"tcbStatus":"UpToDate"`), 1)
		}, ErrInvalidSignature, "TCB info (FMSPC 50806f000000) signature does not verify"},
		{"TCB info SVN", func(f *CollateralFiles) {
			f.TCBInfos[0] = bytes.Replace(f.TCBInfos[0], []byte(`{"svn":5,`), []byte(`{"svn":3,`), 1)
		}, ErrInvalidSignature, "TCB info (FMSPC 50806f000000) signature does not verify"},
		{"TCB info signature", func(f *CollateralFiles) {
			f.TCBInfos[0] = bytes.Replace(f.TCBInfos[0], []byte(`"signature":"f6`), []byte(`"signature":"f7`), 1)
		}, ErrInvalidSignature, "TCB info (FMSPC 50806f000000) signature does not verify"},
		{"QE identity ISVSVN", func(f *CollateralFiles) {
			f.QEIdentity = bytes.Replace(f.QEIdentity, []byte(`"isvsvn":4`), []byte(`"isvsvn":3`), 1)
		}, ErrInvalidSignature, "QE identity signature does not verify"},
		{"root CA CRL", func(f *CollateralFiles) {
			f.RootCACRL = bytes.Clone(f.RootCACRL)
			f.RootCACRL[len(f.RootCACRL)-5] ^= 1
		}, ErrInvalidSignature, "root CA CRL signature does not verify"},
		{"PCK CRL", func(f *CollateralFiles) {
			f.PCKPlatformCRL = bytes.Clone(f.PCKPlatformCRL)
			f.PCKPlatformCRL[len(f.PCKPlatformCRL)-5] ^= 1
		}, ErrInvalidSignature, "PCK CRL signature does not verify"},
		{"PCK CRL of another CA", func(f *CollateralFiles) {
			f.PCKPlatformCRL = f.RootCACRL
		}, ErrUntrustedCertificate, `PCK CRL is issued by "Intel SGX Root CA", want "Intel SGX PCK Platform CA"`},
		{"no platform CRL", func(f *CollateralFiles) {
			f.PCKProcessorCRL, f.PCKPlatformCRL = f.PCKPlatformCRL, nil
		}, ErrNoCollateral, "no CRL of it (pck_platform.crl)"},
		{"TCB info of another FMSPC", func(f *CollateralFiles) {
			f.TCBInfos[0] = bytes.Replace(f.TCBInfos[0], []byte(`"fmspc":"50806f000000"`), []byte(`"fmspc":"50806f000001"`), 1)
		}, ErrNoCollateral, "no TCB info for the platform's FMSPC 50806f000000; add tcb_info_50806f000000.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := genuineCollateralFiles(t)
			tc.mutate(&f)
			c := mustParseCollateral(t, f)
			_, err := Verify(q, c, genuineTime)
			if !errors.Is(err, tc.target) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Verify = %v, want %v mentioning %q", err, tc.target, tc.want)
			}
		})
	}

	// A TCB signing chain from a test root is not trusted, even when the file carries that root.
	p := newTestPKI(t)
	f := genuineCollateralFiles(t)
	f.TCBSigningChain = pemChain(p.signer, p.root)
	_, err := Verify(q, mustParseCollateral(t, f), genuineTime)
	if !errors.Is(err, ErrUntrustedCertificate) || !strings.Contains(err.Error(), "TCB signing certificate") {
		t.Errorf("test TCB signing chain: Verify = %v", err)
	}
}

func TestVerifyTestPKI(t *testing.T) {
	p := newTestPKI(t)
	c := p.collateral(t, p.newCollateral())
	tq := p.newQuote()
	tq.body.ReportData = [64]byte{1, 2, 3}
	raw := p.build(t, tq)
	v, err := p.verify(t, raw, c)
	if err != nil {
		t.Fatal(err)
	}
	if v.TCB.Status != TCBStatusUpToDate || v.TCB.QE != TCBStatusUpToDate || v.TCB.Reason != "" {
		t.Errorf("TCB = %+v", v.TCB)
	}
	if err := testPolicy(tq.body.ReportData).Check(v); err != nil {
		t.Errorf("policy: %v", err)
	}

	// The production verifier trusts only Intel's root: the same quote and collateral fail, even though
	// the quote carries the test root in its chain.
	if _, err := Verify(mustParseQuote(t, raw), c, testNow); !errors.Is(err, ErrUntrustedCertificate) || !strings.Contains(err.Error(), "does not chain to the Intel SGX Root CA") {
		t.Errorf("Verify with the embedded root = %v, want ErrUntrustedCertificate", err)
	}
}

func TestVerifyTestPKIFailures(t *testing.T) {
	p := newTestPKI(t)
	for _, tc := range []struct {
		name   string
		quote  func(q *testQuote)
		coll   func(c *testCollateral)
		target error
		want   string
	}{
		{name: "revoked PCK", coll: func(c *testCollateral) { c.revokedByPCKCRL = []*big.Int{big.NewInt(7), p.pck.SerialNumber} },
			target: ErrRevoked, want: "PCK certificate (serial " + p.pck.SerialNumber.Text(16) + ") revoked by PCK CRL"},
		{name: "revoked PCK CA", coll: func(c *testCollateral) { c.revokedByRoot = []*big.Int{p.ca.SerialNumber} },
			target: ErrRevoked, want: `PCK CA certificate "Intel SGX PCK Platform CA" (serial ` + p.ca.SerialNumber.Text(16) + ") revoked by root CA CRL"},
		{name: "revoked TCB signer", coll: func(c *testCollateral) { c.revokedByRoot = []*big.Int{p.signer.SerialNumber} },
			target: ErrRevoked, want: "TCB signing certificate (serial"},
		{name: "expired collateral", coll: func(c *testCollateral) { c.issue, c.next = testNow.AddDate(0, -2, 0), testNow.AddDate(0, -1, 0) },
			target: ErrExpired, want: "root CA CRL expired at 2025-02-01T12:00:00Z (verification time 2025-03-01T12:00:00Z): refresh the collateral cache"},
		{name: "expired TCB info", coll: func(c *testCollateral) { c.tcbInfoNext = testNow.Add(-time.Second) },
			target: ErrExpired, want: "TCB info (FMSPC 00906ed50000) expired at 2025-03-01T11:59:59Z (verification time 2025-03-01T12:00:00Z): refresh the collateral cache"},
		{name: "QE report data binding", quote: func(q *testQuote) { q.skipBinding = true; q.qe.ReportData = [64]byte{1} },
			target: ErrInvalidSignature, want: "QE report data is not SHA-256"},
		{name: "QE report data upper half", quote: func(q *testQuote) { q.qeReportDataTail = 1 },
			target: ErrInvalidSignature, want: "QE report data is not SHA-256"},
		{name: "empty QE authentication data", quote: func(q *testQuote) { q.authData = []byte{} }},
		{name: "other QE signer", quote: func(q *testQuote) { q.qe.MRSigner[0] ^= 1 },
			target: ErrCollateralMismatch, want: "QE MRSIGNER"},
		{name: "other QE product", quote: func(q *testQuote) { q.qe.ISVProdID = 1 },
			target: ErrCollateralMismatch, want: "QE ISVPRODID 1"},
		{name: "QE debug attribute", quote: func(q *testQuote) { q.qe.Attributes[0] |= 0x02 },
			target: ErrCollateralMismatch, want: "QE attributes"},
		{name: "TDX module signer", quote: func(q *testQuote) { q.body.MRSignerSEAM[0] = 1 },
			target: ErrCollateralMismatch, want: "MRSIGNERSEAM"},
		{name: "TDX module attributes", quote: func(q *testQuote) { q.body.SEAMAttributes[0] = 1 },
			target: ErrCollateralMismatch, want: "SEAMATTRIBUTES"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tq := p.newQuote()
			if tc.quote != nil {
				tc.quote(tq)
			}
			tc2 := p.newCollateral()
			if tc.coll != nil {
				tc.coll(tc2)
			}
			_, err := p.verify(t, p.build(t, tq), p.collateral(t, tc2))
			if tc.target == nil {
				if err != nil {
					t.Fatalf("Verify = %v, want success", err)
				}
				return
			}
			if !errors.Is(err, tc.target) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Verify = %v, want %v mentioning %q", err, tc.target, tc.want)
			}
		})
	}
}

func TestVerifyTestPKIChains(t *testing.T) {
	p := newTestPKI(t)
	c := p.collateral(t, p.newCollateral())
	other := newTestPKI(t)

	for _, tc := range []struct {
		name  string
		chain []byte
		want  string
	}{
		{"PCK from another root", pemChain(other.pck, other.ca, other.root), "does not chain to the Intel SGX Root CA"},
		{"PCK from another root, trusted root appended", pemChain(other.pck, other.ca, other.root, p.root), "does not chain"},
		{"no CA", pemChain(p.pck, p.root), "does not chain"},
		{"PCK signed by the root", pemChain(p.issuePCK(t, p.root, p.rootKey), p.root), "chain has 2 certificates up to the root, want 3"},
		{"CA with another name", func() []byte {
			ca := issue(t, caTemplate("Some Other CA"), p.root, p.rootKey, &p.caKey.PublicKey)
			return pemChain(p.issuePCK(t, ca, p.caKey), ca, p.root)
		}(), `issued by "Some Other CA"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tq := p.newQuote()
			tq.chain = tc.chain
			_, err := p.verify(t, p.build(t, tq), c)
			if !errors.Is(err, ErrUntrustedCertificate) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Verify = %v, want ErrUntrustedCertificate mentioning %q", err, tc.want)
			}
		})
	}

	// The QE report signed by another key than the PCK's.
	tq := p.newQuote()
	tq.chain = pemChain(other.pck, other.ca, other.root)
	if _, err := other.verify(t, p.build(t, tq), other.collateral(t, other.newCollateral())); !errors.Is(err, ErrInvalidSignature) || !strings.Contains(err.Error(), "QE report signature") {
		t.Errorf("QE report signed by another PCK: %v", err)
	}

	// Junk in the PEM chain.
	for _, chain := range [][]byte{
		append(pemChain(p.pck, p.ca, p.root), "junk"...),
		append([]byte("junk\n"), pemChain(p.pck, p.ca, p.root)...),
		append(append(pemChain(p.pck), "junk\n"...), pemChain(p.ca, p.root)...),
		[]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
		[]byte("not PEM"),
	} {
		tq := p.newQuote()
		tq.chain = chain
		if _, err := p.verify(t, p.build(t, tq), c); !errors.Is(err, ErrMalformedQuote) {
			t.Errorf("chain %q...: %v, want ErrMalformedQuote", chain[:10], err)
		}
	}
	// A trailing NUL, as some quoting libraries write, is accepted.
	tq = p.newQuote()
	tq.chain = append(pemChain(p.pck, p.ca, p.root), 0)
	if _, err := p.verify(t, p.build(t, tq), c); err != nil {
		t.Errorf("chain with trailing NUL: %v", err)
	}
}

func TestVerifyTestPKIPCEID(t *testing.T) {
	p := newTestPKI(t)
	c := p.collateral(t, p.newCollateral())
	p.pceid = [2]byte{0, 1}
	p.pck = p.issuePCK(t, p.ca, p.caKey)
	_, err := p.verify(t, p.build(t, p.newQuote()), c)
	if !errors.Is(err, ErrCollateralMismatch) || !strings.Contains(err.Error(), "PCE ID 0001") {
		t.Fatalf("Verify = %v", err)
	}
}

func TestVerifyV5Quotes(t *testing.T) {
	p := newTestPKI(t)
	c := p.collateral(t, p.newCollateral())
	for _, tc := range []struct {
		name     string
		bodyType uint16
		svn2     [16]byte
		want     TCBStatus
	}{
		{"TD report 1.0", BodyTypeTDReport10, [16]byte{}, TCBStatusUpToDate},
		{"TD report 1.5, no TEE_TCB_SVN_2", BodyTypeTDReport15, [16]byte{}, TCBStatusUpToDate},
		{"TD report 1.5, current TEE_TCB_SVN_2", BodyTypeTDReport15, [16]byte{3, 0, 5}, TCBStatusUpToDate},
		{"TD report 1.5, older TEE_TCB_SVN_2", BodyTypeTDReport15, [16]byte{3, 0, 4}, TCBStatusOutOfDate},
		{"TD report 1.5, unsupported TEE_TCB_SVN_2", BodyTypeTDReport15, [16]byte{1}, TCBStatusNotSupported},
	} {
		tq := p.newQuote()
		tq.version, tq.bodyType = QuoteVersion5, tc.bodyType
		tq.body.TEETCBSVN2 = tc.svn2
		raw := p.build(t, tq)
		v, err := p.verify(t, raw, c)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if v.TCB.Status != tc.want {
			t.Errorf("%s: TCB status %s, want %s (%s)", tc.name, v.TCB.Status, tc.want, v.TCB.Reason)
		}
		// The v5 body descriptor is signed too.
		b := bytes.Clone(raw)
		b[30] ^= 1 // header user data
		if _, err := p.verify(t, b, c); !errors.Is(err, ErrInvalidSignature) {
			t.Errorf("%s: modified header: %v", tc.name, err)
		}
	}
}

func TestVerifyArguments(t *testing.T) {
	p := newTestPKI(t)
	c := p.collateral(t, p.newCollateral())
	q := mustParseQuote(t, p.build(t, p.newQuote()))
	if _, err := verify(nil, c, p.root, testNow); err == nil {
		t.Error("nil quote verified")
	}
	if _, err := verify(&Quote{}, c, p.root, testNow); err == nil {
		t.Error("unparsed quote verified")
	}
	if _, err := verify(q, nil, p.root, testNow); !errors.Is(err, ErrNoCollateral) {
		t.Errorf("nil collateral: %v", err)
	}
	if _, err := verify(q, &Collateral{}, p.root, testNow); !errors.Is(err, ErrNoCollateral) {
		t.Errorf("empty collateral: %v", err)
	}
	if _, err := verify(q, c, p.root, time.Time{}); err == nil {
		t.Error("zero time verified")
	}
}

func TestValidateEndToEnd(t *testing.T) {
	p := newTestPKI(t)
	files := p.files(t, p.newCollateral())
	c := mustParseCollateral(t, files)
	// Validate uses the embedded root, so it can only be shown to fail on test data ...
	tq := p.newQuote()
	raw := p.build(t, tq)
	pol := testPolicy(tq.body.ReportData)
	if _, err := Validate(c, pol, raw, testNow); !errors.Is(err, ErrUntrustedCertificate) {
		t.Errorf("Validate(test quote) = %v, want ErrUntrustedCertificate", err)
	}
	// ... and it checks the policy before anything else.
	if _, err := Validate(c, &Policy{}, raw, testNow); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("Validate with an empty policy = %v, want ErrInvalidPolicy", err)
	}
	if _, err := Validate(c, pol, raw[:100], testNow); !errors.Is(err, ErrMalformedQuote) {
		t.Errorf("Validate(truncated) = %v", err)
	}
	// On genuine data, the TCB status decides.
	gq := mustParseQuote(t, genuineQuote(t))
	gpol := (&Policy{MRTD: []HexBytes{gq.Body.MRTD[:]}}).WithReportData(gq.Body.ReportData)
	_, err := Validate(mustParseCollateral(t, genuineCollateralFiles(t)), gpol, genuineQuote(t), genuineTime)
	if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "TCB status NotSupported") {
		t.Errorf("Validate(genuine) = %v", err)
	}
}

func TestIntelRoot(t *testing.T) {
	root := IntelSGXRootCA()
	sum := sha256.Sum256(root.Raw)
	if hex.EncodeToString(sum[:]) != intelRootSHA256 || root.Subject.CommonName != "Intel SGX Root CA" {
		t.Fatalf("embedded root %q %x", root.Subject.CommonName, sum)
	}
	// It is the root of the genuine quote's chain.
	q := mustParseQuote(t, genuineQuote(t))
	chain, err := parseCertChainPEM(q.PCKCertChain, "chain")
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 || !bytes.Equal(chain[2].Raw, root.Raw) {
		t.Fatal("the genuine PCK chain does not end in the embedded root")
	}
	// Callers get a copy.
	root.Subject.CommonName = "changed"
	if IntelSGXRootCA().Subject.CommonName != "Intel SGX Root CA" {
		t.Fatal("IntelSGXRootCA returns shared state")
	}
}

func BenchmarkVerifyGenuine(b *testing.B) {
	c := mustParseCollateral(b, genuineCollateralFiles(b))
	raw := genuineQuote(b)
	b.ReportAllocs()
	for b.Loop() {
		q, err := ParseQuote(raw)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Verify(q, c, genuineTime); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzVerifyQuote runs the whole verification on mutated quotes with the genuine collateral: nothing
// panics, and whatever verifies carries exactly the genuine signed data and QE report.
func FuzzVerifyQuote(f *testing.F) {
	raw := genuineQuote(f)
	f.Add(raw)
	c := mustParseCollateral(f, genuineCollateralFiles(f))
	genuine := mustParseQuote(f, raw)
	f.Fuzz(func(t *testing.T, data []byte) {
		q, err := ParseQuote(data)
		if err != nil {
			return
		}
		if _, err := Verify(q, c, genuineTime); err != nil {
			return
		}
		if !bytes.Equal(q.signed, genuine.signed) || !bytes.Equal(q.qeReportRaw, genuine.qeReportRaw) || q.AttestationKey != genuine.AttestationKey {
			t.Fatal("a quote with other signed content verified")
		}
	})
}
