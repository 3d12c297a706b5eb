package validators

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/snp/snptest"
	"github.com/constellation-dev/constellation/internal/attestation/tdx"
	"github.com/constellation-dev/constellation/internal/attestation/tdx/tdxtest"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

var pcrs = measurements.M{4: {Expected: measurements.Digest{1}}, 8: {Expected: measurements.Digest{2}}}

// uefiPCRs is a policy of the UEFI scheme (qemu-vtpm).
var uefiPCRs = measurements.M{4: {Expected: measurements.Digest{1}}, 11: {Expected: measurements.Digest{2}}, 12: {}, 13: {}}

// testSNP returns a test PKI, a platform of it and its policy.
func testSNP(t *testing.T) (*snptest.PKI, *snptest.Platform) {
	t.Helper()
	pki, err := snptest.NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	pl, err := pki.NewPlatform([snp.MeasurementSize]byte{0x4d})
	if err != nil {
		t.Fatal(err)
	}
	return pki, pl
}

func testOptions(t *testing.T, pki *snptest.PKI) Options {
	t.Helper()
	roots, err := pki.Roots()
	if err != nil {
		t.Fatal(err)
	}
	return Options{SNPRoots: roots, Now: func() time.Time { return snptest.Now }}
}

func tdxPolicy(t *testing.T) *TDX {
	t.Helper()
	files, err := tdx.ReadCollateralFiles(tdxtest.CollateralDir(t))
	if err != nil {
		t.Fatal(err)
	}
	r := func(b byte) tdx.HexBytes { return bytes.Repeat([]byte{b}, 48) }
	return &TDX{Policy: tdx.Policy{MRTD: []tdx.HexBytes{r(1)}, RTMR0: r(2), RTMR1: r(3), RTMR2: r(4), RTMR3: r(5)}, Collateral: *files}
}

func debugTDX(t *testing.T) *TDX {
	p := tdxPolicy(t)
	p.Policy.TDAttributes = tdx.HexBytes{1, 0, 0, 0, 0, 0, 0, 0}
	return p
}

// Every supported variant gets a validator of that variant.
func TestNewEveryVariant(t *testing.T) {
	_, ca, err := tpmtest.NewCACert("AK CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, pl := testSNP(t)
	snpPart := &SNP{Policy: *pl.Policy()}
	for _, p := range []*Policy{
		{Variant: "mini-vtpm", Measurements: pcrs, AKRoots: []*x509.Certificate{ca}},
		{Variant: "qemu-vtpm", Measurements: uefiPCRs, AKRoots: []*x509.Certificate{ca}},
		{Variant: "qemu-sev-snp", SNP: snpPart},
		{Variant: "aws-sev-snp", Measurements: pcrs, SNP: snpPart},
		{Variant: "gcp-sev-snp", Measurements: pcrs, SNP: snpPart},
		{Variant: "azure-sev-snp", Measurements: pcrs, SNP: snpPart},
		{Variant: "qemu-tdx", TDX: tdxPolicy(t)},
		{Variant: "azure-tdx", Measurements: pcrs, TDX: tdxPolicy(t)},
	} {
		v, err := New(p, Options{})
		if err != nil {
			t.Errorf("%s: %v", p.Variant, err)
			continue
		}
		if v.Variant().Name != p.Variant {
			t.Errorf("%s: validator of %s", p.Variant, v.Variant())
		}
	}
	// Every registered variant is built above.
	if n := len(attestation.Variants()); n != 8 {
		t.Errorf("%d variants registered; cover the new ones here", n)
	}
}

// A policy that cannot be enforced is refused, with what to fix.
func TestNewRefuses(t *testing.T) {
	_, ca, err := tpmtest.NewCACert("AK CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, pl := testSNP(t)
	debug := pl.Policy()
	debug.AllowDebug = true
	withReportData := pl.Policy()
	withReportData.ReportData = make([]byte, 64)
	noTCB := pl.Policy()
	noTCB.MinimumTCB = nil
	badTDX := tdxPolicy(t)
	badTDX.Policy.MRTD = nil
	onlyMRTD := tdxPolicy(t)
	onlyMRTD.Policy.RTMR0, onlyMRTD.Policy.RTMR1, onlyMRTD.Policy.RTMR2, onlyMRTD.Policy.RTMR3 = nil, nil, nil, nil
	noCollateral := tdxPolicy(t)
	noCollateral.Collateral.QEIdentity = nil
	snpPart := &SNP{Policy: *pl.Policy()}
	for name, tc := range map[string]struct {
		p    *Policy
		want []string
	}{
		"nil policy":                   {nil, []string{"no attestation policy"}},
		"unknown variant":              {&Policy{Variant: "qemu-sev", SNP: snpPart}, []string{`unknown attestation variant "qemu-sev"`, "known: mini-vtpm", "set the variant"}},
		"no variant":                   {&Policy{Measurements: pcrs}, []string{`unknown attestation variant ""`}},
		"azure-tdx without PCRs":       {&Policy{Variant: "azure-tdx", TDX: tdxPolicy(t)}, []string{"azure-tdx: measurements"}},
		"azure-tdx without TDX":        {&Policy{Variant: "azure-tdx", Measurements: pcrs}, []string{"azure-tdx needs a TDX policy"}},
		"azure-tdx with debug bits":    {&Policy{Variant: "azure-tdx", Measurements: pcrs, TDX: debugTDX(t)}, []string{"the TDX policy", "debug bits"}},
		"SEV-SNP variant without SNP":  {&Policy{Variant: "aws-sev-snp", Measurements: pcrs}, []string{"aws-sev-snp needs an SEV-SNP policy", "attestation.snp"}},
		"qemu-sev-snp without SNP":     {&Policy{Variant: "qemu-sev-snp"}, []string{"qemu-sev-snp needs an SEV-SNP policy"}},
		"azure-sev-snp without SNP":    {&Policy{Variant: "azure-sev-snp", Measurements: pcrs}, []string{"azure-sev-snp needs an SEV-SNP policy"}},
		"TDX variant without TDX":      {&Policy{Variant: "qemu-tdx"}, []string{"qemu-tdx needs a TDX policy", "collateralDir"}},
		"allowDebug":                   {&Policy{Variant: "gcp-sev-snp", Measurements: pcrs, SNP: &SNP{Policy: *debug}}, []string{"allowDebug is set", "never accepted in a cluster"}},
		"allowDebug without vTPM":      {&Policy{Variant: "qemu-sev-snp", SNP: &SNP{Policy: *debug}}, []string{"allowDebug is set"}},
		"fixed reportData":             {&Policy{Variant: "qemu-sev-snp", SNP: &SNP{Policy: *withReportData}}, []string{"reportData is set"}},
		"SNP policy without TCB":       {&Policy{Variant: "qemu-sev-snp", SNP: &SNP{Policy: *noTCB}}, []string{"the SEV-SNP policy", "minimumTCB"}},
		"TDX policy without MRTD":      {&Policy{Variant: "qemu-tdx", TDX: badTDX}, []string{"the TDX policy", "no accepted MRTD"}},
		"qemu-tdx with only MRTD":      {&Policy{Variant: "qemu-tdx", TDX: onlyMRTD}, []string{"the TDX policy", "rtmr0, rtmr1, rtmr2, rtmr3 not set", "accepts any image"}},
		"TDX without collateral":       {&Policy{Variant: "qemu-tdx", TDX: noCollateral}, []string{"the TDX collateral", "refresh the collateral cache"}},
		"vTPM variant without PCRs":    {&Policy{Variant: "aws-sev-snp", SNP: snpPart}, []string{"aws-sev-snp: measurements", "add the expected PCR values"}},
		"PCRs without vTPM":            {&Policy{Variant: "qemu-sev-snp", Measurements: pcrs, SNP: snpPart}, []string{"qemu-sev-snp has no vTPM", "remove them"}},
		"mini-vtpm without AK roots":   {&Policy{Variant: "mini-vtpm", Measurements: pcrs}, []string{"mini-vtpm needs the certificate of the CA"}},
		"all PCRs warn-only":           {&Policy{Variant: "mini-vtpm", Measurements: measurements.M{0: {WarnOnly: true}, 4: {WarnOnly: true}, 8: {WarnOnly: true}}, AKRoots: []*x509.Certificate{ca}}, []string{"accepts any node image", "every PCR is warn-only"}},
		"image PCR missing":            {&Policy{Variant: "mini-vtpm", Measurements: measurements.M{0: {}, 8: {}, 15: {}}, AKRoots: []*x509.Certificate{ca}}, []string{"accepts any node image", "PCR 4 missing"}},
		"image PCR warn-only":          {&Policy{Variant: "aws-sev-snp", Measurements: measurements.M{0: {}, 4: {WarnOnly: true}, 8: {}}, SNP: snpPart}, []string{"accepts any node image", "PCR 4 warn-only"}},
		"boot-params PCR missing":      {&Policy{Variant: "mini-vtpm", Measurements: measurements.M{0: {}, 4: {}, 15: {}}, AKRoots: []*x509.Certificate{ca}}, []string{"boot parameters", "PCR 8 missing"}},
		"boot-params PCR warn-only":    {&Policy{Variant: "azure-tdx", Measurements: measurements.M{0: {}, 4: {}, 8: {WarnOnly: true}}, TDX: tdxPolicy(t)}, []string{"boot parameters", "PCR 8 warn-only"}},
		"qemu-vtpm without AK roots":   {&Policy{Variant: "qemu-vtpm", Measurements: uefiPCRs}, []string{"qemu-vtpm needs the certificate of the CA"}},
		"qemu-vtpm with a mini policy": {&Policy{Variant: "qemu-vtpm", Measurements: pcrs, AKRoots: []*x509.Certificate{ca}}, []string{"accepts any node image", "uefi boot scheme", "PCRs 11, 12, 13 missing"}},
		"qemu-vtpm UKI PCR warn-only":  {&Policy{Variant: "qemu-vtpm", Measurements: measurements.M{0: {}, 4: {}, 11: {WarnOnly: true}, 12: {}, 13: {}}, AKRoots: []*x509.Certificate{ca}}, []string{"accepts any node image", "PCR 11 warn-only"}},
		"qemu-vtpm ESP PCR missing":    {&Policy{Variant: "qemu-vtpm", Measurements: measurements.M{0: {}, 4: {}, 11: {}, 12: {}}, AKRoots: []*x509.Certificate{ca}}, []string{"accepts any node image", "PCR 13 missing"}},
		"mini-vtpm with a UEFI policy": {&Policy{Variant: "mini-vtpm", Measurements: uefiPCRs, AKRoots: []*x509.Certificate{ca}}, []string{"accepts any node image", "PCR 8 missing"}},
		"AK roots on hardware variant": {&Policy{Variant: "aws-sev-snp", Measurements: pcrs, AKRoots: []*x509.Certificate{ca}, SNP: snpPart}, []string{"only through the hardware report"}},
		"SNP policy on mini-vtpm":      {&Policy{Variant: "mini-vtpm", Measurements: pcrs, AKRoots: []*x509.Certificate{ca}, SNP: snpPart}, []string{"mini-vtpm evidence has no SEV-SNP report; remove it"}},
		"TDX policy on SEV-SNP":        {&Policy{Variant: "qemu-sev-snp", SNP: snpPart, TDX: tdxPolicy(t)}, []string{"qemu-sev-snp evidence has no TDX quote; remove it"}},
		"fresh and a member":           {&Policy{Variant: "qemu-sev-snp", SNP: snpPart, Fresh: true, ClusterID: make([]byte, 32)}, []string{"both fresh and a member"}},
		"short cluster ID":             {&Policy{Variant: "qemu-sev-snp", SNP: snpPart, ClusterID: make([]byte, 16)}, []string{"16 bytes, not 32"}},
		"cluster ID on a vTPM":         {&Policy{Variant: "mini-vtpm", Measurements: pcrs, AKRoots: []*x509.Certificate{ca}, ClusterID: make([]byte, 32)}, []string{"PCR 15 in the measurements"}},
		"fresh on qemu-tdx":            {&Policy{Variant: "qemu-tdx", TDX: tdxPolicy(t), Fresh: true}, []string{"does not bind the cluster"}},
		"foreign CRL":                  {&Policy{Variant: "qemu-sev-snp", SNP: &SNP{Policy: *pl.Policy(), CRLs: map[snp.Product][][]byte{snp.Milan: {[]byte("junk")}}}}, []string{"the AMD CRLs"}},
	} {
		t.Run(name, func(t *testing.T) {
			v, err := New(tc.p, Options{})
			if err == nil {
				t.Fatalf("New accepted the policy: validator of %s", v.Variant())
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q: %v", want, err)
				}
			}
		})
	}
}

// The validators check evidence from the product's issuers, each request with its own REPORT_DATA.
func TestValidateEvidence(t *testing.T) {
	pki, pl := testSNP(t)
	opts := testOptions(t, pki)
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{9}, 32)

	t.Run("qemu-sev-snp", func(t *testing.T) {
		v, err := New(&Policy{Variant: "qemu-sev-snp", SNP: &SNP{Policy: *pl.Policy()}}, opts)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := snp.NewIssuer(pl).Issue(ctx, nonce, []byte("user"))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := v.Validate(ctx, ev, nonce); err != nil || string(got) != "user" {
			t.Fatalf("Validate = %q, %v", got, err)
		}
		other := bytes.Repeat([]byte{8}, 32)
		if _, err := v.Validate(ctx, ev, other); !errors.Is(err, snp.ErrReportData) {
			t.Errorf("evidence for another nonce: %v, want ErrReportData", err)
		}
	})

	t.Run("qemu-sev-snp membership", func(t *testing.T) {
		// Which cluster a node belongs to: fresh (init, join), a member of one, or any (the default).
		clusterA, clusterB := bytes.Repeat([]byte{0xa}, 32), bytes.Repeat([]byte{0xb}, 32)
		fresh := snp.NewIssuer(pl)
		member := snp.NewIssuer(pl)
		if err := member.JoinCluster(clusterA); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name   string
			policy *Policy
			fresh  bool // accepts the fresh node
			member bool // accepts the member of cluster A
		}{
			{"any", &Policy{Variant: "qemu-sev-snp", SNP: &SNP{Policy: *pl.Policy()}}, true, true},
			{"fresh", &Policy{Variant: "qemu-sev-snp", SNP: &SNP{Policy: *pl.Policy()}, Fresh: true}, true, false},
			{"member of A", &Policy{Variant: "qemu-sev-snp", SNP: &SNP{Policy: *pl.Policy()}, ClusterID: clusterA}, false, true},
			{"member of B", &Policy{Variant: "qemu-sev-snp", SNP: &SNP{Policy: *pl.Policy()}, ClusterID: clusterB}, false, false},
		} {
			v, err := New(tc.policy, opts)
			if err != nil {
				t.Fatal(err)
			}
			for _, node := range []struct {
				issuer *snp.Issuer
				want   bool
				what   string
			}{{fresh, tc.fresh, "fresh node"}, {member, tc.member, "member of A"}} {
				ev, err := node.issuer.Issue(ctx, nonce, nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := v.Validate(ctx, ev, nonce); (err == nil) != node.want {
					t.Errorf("%s validator, %s: %v, want accepted %v", tc.name, node.what, err, node.want)
				}
			}
		}
	})

	t.Run("aws-sev-snp", func(t *testing.T) {
		tpm, err := snptest.NewVTPM()
		if err != nil {
			t.Fatal(err)
		}
		v, err := New(&Policy{Variant: "aws-sev-snp", Measurements: tpm.Policy(), SNP: &SNP{Policy: *pl.Policy()}}, opts)
		if err != nil {
			t.Fatal(err)
		}
		issuer, err := snp.NewVTPMIssuer(attestation.AWSSEVSNP, pl, tpm)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := issuer.Issue(ctx, nonce, []byte("user"))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := v.Validate(ctx, ev, nonce); err != nil || string(got) != "user" {
			t.Fatalf("Validate = %q, %v", got, err)
		}
		// The same evidence as another variant's: refused.
		gcp, err := New(&Policy{Variant: "gcp-sev-snp", Measurements: tpm.Policy(), SNP: &SNP{Policy: *pl.Policy()}}, opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := gcp.Validate(ctx, ev, nonce); err == nil {
			t.Error("a gcp-sev-snp validator accepted aws-sev-snp evidence")
		}
		// Another launch measurement: refused by the hardware policy even though the PCRs match.
		other := pl.Policy()
		other.Measurements = []snp.HexBytes{bytes.Repeat([]byte{0x4e}, 48)}
		strict, err := New(&Policy{Variant: "aws-sev-snp", Measurements: tpm.Policy(), SNP: &SNP{Policy: *other}}, opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := strict.Validate(ctx, ev, nonce); !errors.Is(err, snp.ErrPolicy) {
			t.Errorf("another launch measurement: %v, want ErrPolicy", err)
		}
	})

	t.Run("embedded roots", func(t *testing.T) {
		// Without the test roots, the test PKI's reports chain to nothing trusted.
		v, err := New(&Policy{Variant: "qemu-sev-snp", SNP: &SNP{Policy: *pl.Policy()}}, Options{Now: opts.Now})
		if err != nil {
			t.Fatal(err)
		}
		ev, err := snp.NewIssuer(pl).Issue(ctx, nonce, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Validate(ctx, ev, nonce); err == nil {
			t.Fatal("a report of the test PKI verified against the embedded AMD roots")
		}
	})
}
