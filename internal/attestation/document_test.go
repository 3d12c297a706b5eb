package attestation

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func validDocument(t testing.TB) []byte {
	t.Helper()
	doc := &Document{
		Version:  DocumentVersion,
		Variant:  MiniVTPM.Name,
		UserData: []byte("user"),
		TPM: &TPMEvidence{
			AKCert: []byte{0x30, 0x00},
			Quotes: []Quote{{Quote: []byte{1}, Signature: []byte{2}, PCRs: map[uint32][]byte{0: make([]byte, 32)}}},
		},
	}
	raw, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestParseDocument(t *testing.T) {
	raw := validDocument(t)
	doc, err := ParseDocument(raw)
	if err != nil {
		t.Fatalf("ParseDocument: %v", err)
	}
	if doc.Variant != MiniVTPM.Name || string(doc.UserData) != "user" || len(doc.TPM.Quotes) != 1 {
		t.Fatalf("unexpected document %+v", doc)
	}
}

func TestParseDocumentRejects(t *testing.T) {
	raw := validDocument(t)
	tests := map[string][]byte{
		"empty":         nil,
		"truncated":     raw[:len(raw)-1],
		"trailing data": append(bytes.Clone(raw), []byte(`{}`)...),
		"unknown field": bytes.Replace(raw, []byte(`"version"`), []byte(`"extra":1,"version"`), 1),
		// encoding/json keeps the last of two keys and matches keys case-insensitively: a document that
		// names two variants, or two sets of user data, means what the last one says to one reader and
		// what the first says to another.
		"variant twice":    bytes.Replace(raw, []byte(`"variant"`), []byte(`"variant":"qemu-tdx","variant"`), 1),
		"variant in case":  bytes.Replace(raw, []byte(`"variant"`), []byte(`"Variant":"qemu-tdx","variant"`), 1),
		"user data twice":  bytes.Replace(raw, []byte(`"userData"`), []byte(`"userData":"b3RoZXI=","userData"`), 1),
		"misspelled field": bytes.Replace(raw, []byte(`"userData"`), []byte(`"USERDATA"`), 1),
		"wrong version":    bytes.Replace(raw, []byte(`"version":1`), []byte(`"version":2`), 1),
		"unknown variant":  bytes.Replace(raw, []byte(`"mini-vtpm"`), []byte(`"no-such-vtpm"`), 1),
		"not json":         []byte("\x00\x01"),
		"too large":        make([]byte, MaxDocumentSize+1),
		"huge user data":   bytes.Replace(raw, []byte(`"dXNlcg=="`), []byte(`"`+string(bytes.Repeat([]byte("QUFB"), MaxUserDataSize))+`"`), 1),
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseDocument(in)
			if !errors.Is(err, ErrMalformedDocument) {
				t.Fatalf("ParseDocument = %v, want ErrMalformedDocument", err)
			}
		})
	}
}

// hardwareDocuments are well-formed documents with SEV-SNP and TDX parts (their contents are not real
// evidence: ParseDocument checks structure and sizes only).
func hardwareDocuments(t testing.TB) map[string][]byte {
	t.Helper()
	docs := map[string]*Document{
		"qemu-sev-snp": {Version: DocumentVersion, Variant: QEMUSEVSNP.Name, UserData: []byte("user"),
			SNP: &SNPEvidence{Report: make([]byte, SNPReportSize), CertTable: []byte{1, 2}, CertChain: []byte("-----BEGIN CERTIFICATE-----")}},
		"qemu-tdx": {Version: DocumentVersion, Variant: QEMUTDX.Name, TDX: &TDXEvidence{Quote: []byte{4, 0, 2, 0}}},
		"gcp-sev-snp": {Version: DocumentVersion, Variant: GCPSEVSNP.Name,
			TPM: &TPMEvidence{AKPublic: []byte{0x30, 0}, Quotes: []Quote{{Quote: []byte{1}, Signature: []byte{2}}}},
			SNP: &SNPEvidence{Report: make([]byte, SNPReportSize)}},
	}
	out := map[string][]byte{}
	for name, d := range docs {
		raw, err := d.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		out[name] = raw
	}
	return out
}

func TestParseHardwareDocuments(t *testing.T) {
	for name, raw := range hardwareDocuments(t) {
		doc, err := ParseDocument(raw)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if doc.Variant != name {
			t.Errorf("%s: variant %q", name, doc.Variant)
		}
	}
	// A mini-vtpm document keeps its encoding: the new fields are omitted when empty.
	if bytes.Contains(validDocument(t), []byte("akPublic")) || bytes.Contains(validDocument(t), []byte(`"snp"`)) {
		t.Error("mini-vtpm document mentions hardware fields")
	}
}

func TestParseHardwareDocumentsRejects(t *testing.T) {
	docs := hardwareDocuments(t)
	snp, tdx := docs["qemu-sev-snp"], docs["qemu-tdx"]
	mut := func(raw []byte, fn func(*Document)) []byte {
		d, err := ParseDocument(raw)
		if err != nil {
			t.Fatal(err)
		}
		fn(d)
		out, err := d.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for name, in := range map[string][]byte{
		"short SNP report":       mut(snp, func(d *Document) { d.SNP.Report = d.SNP.Report[:SNPReportSize-1] }),
		"long SNP report":        mut(snp, func(d *Document) { d.SNP.Report = append(d.SNP.Report, 0) }),
		"no SNP report":          mut(snp, func(d *Document) { d.SNP.Report = nil }),
		"huge certificate table": mut(snp, func(d *Document) { d.SNP.CertTable = make([]byte, MaxSNPCertSize+1) }),
		"huge certificate chain": mut(snp, func(d *Document) { d.SNP.CertChain = make([]byte, MaxSNPCertSize+1) }),
		"empty TDX quote":        mut(tdx, func(d *Document) { d.TDX.Quote = nil }),
		"huge TDX quote":         mut(tdx, func(d *Document) { d.TDX.Quote = make([]byte, MaxTDXQuoteSize+1) }),
		"SNP and TDX":            mut(tdx, func(d *Document) { d.SNP = &SNPEvidence{Report: make([]byte, SNPReportSize)} }),
		"SNP part of mini-vtpm":  mut(validDocument(t), func(d *Document) { d.SNP = &SNPEvidence{Report: make([]byte, SNPReportSize)} }),
		"TPM part of qemu":       mut(snp, func(d *Document) { d.TPM = &TPMEvidence{AKPublic: []byte{1}} }),
		"TDX part of SNP+vTPM":   mut(docs["gcp-sev-snp"], func(d *Document) { d.TDX = &TDXEvidence{Quote: []byte{1}} }),
		"variant changed to TDX": bytes.Replace(snp, []byte(`"qemu-sev-snp"`), []byte(`"qemu-tdx"`), 1),
		"huge attestation key":   mut(docs["gcp-sev-snp"], func(d *Document) { d.TPM.AKPublic = make([]byte, MaxAKPublicSize+1) }),
		"HCL report of gcp":      mut(docs["gcp-sev-snp"], func(d *Document) { d.SNP.HCLReport = []byte("HCLA") }),
		"HCL report of qemu-tdx": mut(tdx, func(d *Document) { d.TDX.HCLReport = []byte("HCLA") }),
		"huge TDX HCL report":    mut(bytes.Replace(tdx, []byte(`"qemu-tdx"`), []byte(`"azure-tdx"`), 1), func(d *Document) { d.TDX.HCLReport = make([]byte, MaxHCLReportSize+1) }),
		"huge HCL report":        mut(bytes.Replace(docs["gcp-sev-snp"], []byte(`"gcp-sev-snp"`), []byte(`"azure-sev-snp"`), 1), func(d *Document) { d.SNP.HCLReport = make([]byte, MaxHCLReportSize+1) }),
		"unknown SNP field":      bytes.Replace(snp, []byte(`"report":`), []byte(`"vcek":"","report":`), 1),
		"unknown TDX field":      bytes.Replace(tdx, []byte(`"quote":`), []byte(`"collateral":"","quote":`), 1),
		"SNP not an object":      bytes.Replace(snp, []byte(`"snp":{`), []byte(`"snp":[{`), 1),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseDocument(in); !errors.Is(err, ErrMalformedDocument) {
				t.Fatalf("ParseDocument = %v, want ErrMalformedDocument", err)
			}
		})
	}
}

func TestBindingDigestUnambiguous(t *testing.T) {
	a := BindingDigest(MiniVTPM, []byte("nonce-0123456789"), []byte("ab"))
	b := BindingDigest(MiniVTPM, []byte("nonce-0123456789a"), []byte("b"))
	if a == b {
		t.Fatal("moving a byte from user data to nonce gives the same binding digest")
	}
	other := Variant{Name: "other"}
	if a == BindingDigest(other, []byte("nonce-0123456789"), []byte("ab")) {
		t.Fatal("binding digest does not depend on the variant")
	}
}

func TestVariantRegistry(t *testing.T) {
	for _, v := range Variants() {
		got, err := VariantByName(v.Name)
		if err != nil || !got.OID.Equal(v.OID) {
			t.Fatalf("VariantByName(%q) = %v, %v", v.Name, got, err)
		}
		if byOID, ok := VariantByOID(v.OID); !ok || byOID.Name != v.Name {
			t.Fatalf("VariantByOID(%v) = %v, %v", v.OID, byOID, ok)
		}
		if !IsVariantOID(v.OID) {
			t.Fatalf("IsVariantOID(%v) = false", v.OID)
		}
		if v.Description == "" || (v.Hardware != NoHardware && v.Hardware != SEVSNP && v.Hardware != TDX) {
			t.Fatalf("variant %s: description %q, hardware %q", v.Name, v.Description, v.Hardware)
		}
	}
	// Names and OIDs are unique.
	names, oids := map[string]bool{}, map[string]bool{}
	for _, v := range Variants() {
		if names[v.Name] || oids[v.OID.String()] {
			t.Fatalf("variant %s: duplicate name or OID %v", v.Name, v.OID)
		}
		names[v.Name], oids[v.OID.String()] = true, true
	}
	// The product's variants, with what each combines.
	for _, want := range []struct {
		name     string
		hardware Hardware
		vtpm     bool
	}{
		{"mini-vtpm", NoHardware, true},
		{"qemu-vtpm", NoHardware, true}, {"qemu-sev-snp", SEVSNP, false}, {"qemu-tdx", TDX, false},
		{"aws-sev-snp", SEVSNP, true}, {"gcp-sev-snp", SEVSNP, true}, {"azure-sev-snp", SEVSNP, true}, {"azure-tdx", TDX, true},
	} {
		v, err := VariantByName(want.name)
		if err != nil || v.Hardware != want.hardware || v.VTPM != want.vtpm {
			t.Errorf("variant %s = %+v, %v", want.name, v, err)
		}
	}
	if len(Variants()) != 8 {
		t.Errorf("%d variants registered", len(Variants()))
	}
	if _, err := VariantByName("nope"); err == nil {
		t.Fatal("unknown variant accepted")
	}
}

func FuzzParseDocument(f *testing.F) {
	f.Add(validDocument(f))
	f.Add([]byte(`{"version":1,"variant":"mini-vtpm"}`))
	f.Add([]byte(`{"version":1,"variant":"mini-vtpm","tpm":{"akCert":"","quotes":[{"quote":"","signature":"","pcrs":{"4":"AA=="}}]}}`))
	for _, raw := range hardwareDocuments(f) {
		f.Add(raw)
	}
	f.Add([]byte(`{"version":1,"variant":"qemu-tdx","tdx":{"quote":""}}`))
	f.Add([]byte(`{"version":1,"variant":"aws-sev-snp","snp":{"report":"","certTable":null},"tdx":null}`))
	f.Add([]byte(`{"version":1,"variant":"mini-vtpm","node":"worker-0","tpm":{"quotes":[]}}`))
	named := &Document{Version: DocumentVersion, Variant: QEMUSEVSNP.Name, Node: "worker-0", SNP: &SNPEvidence{Report: make([]byte, SNPReportSize)}}
	if raw, err := named.Marshal(); err == nil {
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		doc, err := ParseDocument(raw)
		if err != nil {
			return
		}
		again, err := doc.Marshal()
		if err != nil {
			t.Fatalf("marshal parsed document: %v", err)
		}
		if _, err := ParseDocument(again); err != nil {
			t.Fatalf("re-parse of a marshalled document failed: %v", err)
		}
	})
}

// Only qemu-sev-snp evidence names its node in the document (its HOST_DATA binds the name); every other
// variant is named by its attestation key certificate, and a name besides it is refused.
func TestDocumentNode(t *testing.T) {
	doc := &Document{Version: DocumentVersion, Variant: QEMUSEVSNP.Name, Node: "worker-0", SNP: &SNPEvidence{Report: make([]byte, SNPReportSize)}}
	raw, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseDocument(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got.Node != "worker-0" || got.AttestationKeySubject() != "worker-0" {
		t.Errorf("node %q, subject %q", got.Node, got.AttestationKeySubject())
	}
	for name, bad := range map[string]*Document{
		"a name too long": {Version: DocumentVersion, Variant: QEMUSEVSNP.Name, Node: strings.Repeat("n", MaxNodeNameSize+1), SNP: &SNPEvidence{Report: make([]byte, SNPReportSize)}},
		"a vTPM variant":  {Version: DocumentVersion, Variant: MiniVTPM.Name, Node: "worker-0", TPM: &TPMEvidence{}},
		"qemu-tdx":        {Version: DocumentVersion, Variant: QEMUTDX.Name, Node: "worker-0", TDX: &TDXEvidence{Quote: []byte{4}}},
	} {
		raw, err := bad.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseDocument(raw); !errors.Is(err, ErrMalformedDocument) {
			t.Errorf("%s: %v, want ErrMalformedDocument", name, err)
		}
	}
}
