package attestation

import (
	"errors"
	"fmt"
)

// AKSource says where a validator takes the attestation key of the evidence's TPM part from. Each validator
// states it where it calls [OpenEvidence]: it is a trust decision, not a property of the document.
type AKSource int

// Where the attestation key comes from. The zero value is no source, and [OpenEvidence] refuses it.
const (
	// NoTPM: the variant has no TPM part, and the document must carry none (qemu-sev-snp, qemu-tdx).
	NoTPM AKSource = iota + 1
	// AKFromReportData: the key is TPMEvidence.AKPublic, which the hardware report binds through its
	// REPORT_DATA; the document carries no attestation key certificate (aws-sev-snp, gcp-sev-snp).
	AKFromReportData
	// AKFromHCLReport: the key is named by the runtime data of the Azure paravisor's HCL report, which the
	// hardware report binds; the document carries neither the key nor a certificate of it, and the hardware
	// part carries the HCL report (azure-sev-snp, azure-tdx).
	AKFromHCLReport
)

func (s AKSource) String() string {
	switch s {
	case NoTPM:
		return "no TPM part"
	case AKFromReportData:
		return "attestation key bound by REPORT_DATA"
	case AKFromHCLReport:
		return "attestation key named by the HCL report"
	}
	return fmt.Sprintf("AKSource(%d)", int(s))
}

// OpenEvidence runs the steps every validator of a hardware variant takes before it looks at the hardware
// report: it checks the nonce's size ([CheckNonce]); parses the evidence document strictly with its size
// bounds ([ParseDocument]); requires the document to be of variant, to carry the hardware part of variant
// and no other; and checks the TPM part against ak: absent for [NoTPM]; present, without a certificate, for
// [AKFromReportData]; present, without key or certificate, and with an HCL report in the hardware part,
// for [AKFromHCLReport].
//
// It trusts nothing: the hardware report, its REPORT_DATA, the attestation key and the TPM quote are for the
// validator to verify, in that order.
func OpenEvidence(variant Variant, ak AKSource, evidence, nonce []byte) (*Document, error) {
	if err := checkAKSource(variant, ak); err != nil {
		return nil, err
	}
	if err := CheckNonce(nonce); err != nil {
		return nil, err
	}
	doc, err := ParseDocument(evidence)
	if err != nil {
		return nil, err
	}
	if doc.Variant != variant.Name {
		return nil, fmt.Errorf("evidence is of variant %q, this validator accepts %q", doc.Variant, variant.Name)
	}
	// ParseDocument refuses the parts a variant never has; check it again here, where the validator's
	// variant is known, so that a change there cannot let a foreign part through.
	var hclReport []byte
	switch variant.Hardware {
	case SEVSNP:
		if doc.SNP == nil {
			return nil, fmt.Errorf("%s evidence has no SEV-SNP report", variant)
		}
		if doc.TDX != nil {
			return nil, fmt.Errorf("%s evidence carries a TDX part", variant)
		}
		hclReport = doc.SNP.HCLReport
	case TDX:
		if doc.TDX == nil {
			return nil, fmt.Errorf("%s evidence has no TDX quote", variant)
		}
		if doc.SNP != nil {
			return nil, fmt.Errorf("%s evidence carries an SEV-SNP part", variant)
		}
		hclReport = doc.TDX.HCLReport
	}
	switch ak {
	case NoTPM:
		if doc.TPM != nil {
			return nil, fmt.Errorf("%s evidence carries a TPM part, which this variant does not use", variant)
		}
	case AKFromReportData:
		if doc.TPM == nil {
			return nil, fmt.Errorf("%s evidence has no TPM part", variant)
		}
		if len(doc.TPM.AKCert) != 0 {
			return nil, fmt.Errorf("%s evidence carries an attestation key certificate; this variant trusts the key only through the %s report", variant, variant.Hardware.Title())
		}
	case AKFromHCLReport:
		if len(hclReport) == 0 {
			return nil, fmt.Errorf("%s evidence has no HCL report", variant)
		}
		if doc.TPM == nil {
			return nil, fmt.Errorf("%s evidence has no TPM part", variant)
		}
		if len(doc.TPM.AKCert) != 0 || len(doc.TPM.AKPublic) != 0 {
			return nil, fmt.Errorf("%s evidence carries an attestation key or its certificate; this variant takes the key only from the HCL report's runtime data", variant)
		}
	}
	return doc, nil
}

// checkAKSource refuses a validator whose stated source of the attestation key does not fit its variant, so
// that a validator that states the wrong source fails on every evidence instead of checking less.
func checkAKSource(variant Variant, ak AKSource) error {
	if variant.Hardware == NoHardware {
		return fmt.Errorf("validator of %s: OpenEvidence is for variants with a hardware report", variant)
	}
	azure := variant.Name == AzureSEVSNP.Name || variant.Name == AzureTDX.Name
	switch ak {
	case NoTPM:
		if !variant.VTPM {
			return nil
		}
	case AKFromReportData:
		if variant.VTPM && !azure {
			return nil
		}
	case AKFromHCLReport:
		if azure {
			return nil
		}
	default:
		return errors.New("validator: no source of the attestation key stated")
	}
	return fmt.Errorf("validator of %s: the attestation key of this variant does not come from %v", variant, ak)
}
