package attestation

import (
	"bytes"
	"strings"
	"testing"
)

// openDoc returns a serialized document of variant with the parts that variant's evidence has; edit
// changes the document before it is serialized.
func openDoc(t *testing.T, variant Variant, edit func(*Document)) []byte {
	t.Helper()
	doc := &Document{Version: DocumentVersion, Variant: variant.Name, UserData: []byte("user")}
	azure := variant.Name == AzureSEVSNP.Name || variant.Name == AzureTDX.Name
	switch variant.Hardware {
	case SEVSNP:
		doc.SNP = &SNPEvidence{Report: make([]byte, SNPReportSize)}
		if azure {
			doc.SNP.HCLReport = []byte("hcl")
		}
	case TDX:
		doc.TDX = &TDXEvidence{Quote: []byte("quote")}
		if azure {
			doc.TDX.HCLReport = []byte("hcl")
		}
	}
	if variant.VTPM {
		doc.TPM = &TPMEvidence{Quotes: []Quote{{Quote: []byte{1}, Signature: []byte{2}}}}
		if !azure {
			doc.TPM.AKPublic = []byte("key")
		}
	}
	if edit != nil {
		edit(doc)
	}
	raw, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

var openNonce = bytes.Repeat([]byte{7}, NonceSize)

func TestOpenEvidence(t *testing.T) {
	for _, c := range []struct {
		variant Variant
		ak      AKSource
	}{
		{QEMUSEVSNP, NoTPM},
		{QEMUTDX, NoTPM},
		{AWSSEVSNP, AKFromReportData},
		{GCPSEVSNP, AKFromReportData},
		{AzureSEVSNP, AKFromHCLReport},
		{AzureTDX, AKFromHCLReport},
	} {
		doc, err := OpenEvidence(c.variant, c.ak, openDoc(t, c.variant, nil), openNonce)
		if err != nil {
			t.Errorf("%s: %v", c.variant, err)
			continue
		}
		if doc.Variant != c.variant.Name || string(doc.UserData) != "user" {
			t.Errorf("%s: unexpected document %+v", c.variant, doc)
		}
	}
}

// Evidence that lacks what its variant's validator trusts, or carries what the validator must not trust, is
// refused before any hardware report is looked at.
func TestOpenEvidenceRefuses(t *testing.T) {
	tests := map[string]struct {
		variant  Variant
		ak       AKSource
		evidence []byte
		nonce    []byte
		want     string
	}{
		"short nonce": {QEMUSEVSNP, NoTPM, openDoc(t, QEMUSEVSNP, nil), openNonce[:8], "invalid nonce"},
		"other variant": {QEMUSEVSNP, NoTPM, openDoc(t, QEMUTDX, nil), openNonce,
			`evidence is of variant "qemu-tdx", this validator accepts "qemu-sev-snp"`},
		"trailing data": {QEMUTDX, NoTPM, append(openDoc(t, QEMUTDX, nil), ' ', '{', '}'), openNonce, "trailing data"},
		"no SNP part": {QEMUSEVSNP, NoTPM, openDoc(t, QEMUSEVSNP, func(d *Document) { d.SNP = nil }), openNonce,
			"has no SEV-SNP report"},
		"no TDX part": {QEMUTDX, NoTPM, openDoc(t, QEMUTDX, func(d *Document) { d.TDX = nil }), openNonce,
			"has no TDX quote"},
		"TPM part without vTPM": {QEMUTDX, NoTPM, openDoc(t, QEMUTDX, func(d *Document) { d.TPM = &TPMEvidence{} }), openNonce,
			"has no TPM part"},
		"no TPM part": {AWSSEVSNP, AKFromReportData, openDoc(t, AWSSEVSNP, func(d *Document) { d.TPM = nil }), openNonce,
			"has no TPM part"},
		"AK certificate beside REPORT_DATA binding": {GCPSEVSNP, AKFromReportData,
			openDoc(t, GCPSEVSNP, func(d *Document) { d.TPM.AKCert = []byte{0x30, 0} }), openNonce,
			"trusts the key only through the SEV-SNP report"},
		"no HCL report": {AzureTDX, AKFromHCLReport, openDoc(t, AzureTDX, func(d *Document) { d.TDX.HCLReport = nil }), openNonce,
			"has no HCL report"},
		"AK beside HCL report": {AzureSEVSNP, AKFromHCLReport,
			openDoc(t, AzureSEVSNP, func(d *Document) { d.TPM.AKPublic = []byte("attacker's key") }), openNonce,
			"takes the key only from the HCL report's runtime data"},
		"AK certificate beside HCL report": {AzureTDX, AKFromHCLReport,
			openDoc(t, AzureTDX, func(d *Document) { d.TPM.AKCert = []byte{0x30, 0} }), openNonce,
			"takes the key only from the HCL report's runtime data"},
		"no TPM part on azure": {AzureTDX, AKFromHCLReport, openDoc(t, AzureTDX, func(d *Document) { d.TPM = nil }), openNonce,
			"has no TPM part"},
		// A validator that states the wrong source of the key fails on every evidence.
		"no source stated": {QEMUSEVSNP, 0, openDoc(t, QEMUSEVSNP, nil), openNonce, "no source of the attestation key"},
		"REPORT_DATA source on azure": {AzureSEVSNP, AKFromReportData, openDoc(t, AzureSEVSNP, nil), openNonce,
			"does not come from attestation key bound by REPORT_DATA"},
		"HCL source off azure": {AWSSEVSNP, AKFromHCLReport, openDoc(t, AWSSEVSNP, nil), openNonce,
			"does not come from attestation key named by the HCL report"},
		"no TPM on a vTPM variant": {AWSSEVSNP, NoTPM, openDoc(t, AWSSEVSNP, nil), openNonce, "does not come from no TPM part"},
		"variant without hardware": {MiniVTPM, AKFromReportData, nil, openNonce, "variants with a hardware report"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			doc, err := OpenEvidence(tc.variant, tc.ak, tc.evidence, tc.nonce)
			if err == nil {
				t.Fatalf("OpenEvidence accepted %+v", doc)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("OpenEvidence = %v, want an error that says %q", err, tc.want)
			}
		})
	}
}
