package attestation

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/constellation-dev/constellation/internal/strictjson"
)

// DocumentVersion is the version of the evidence document this code writes and reads.
const DocumentVersion = 1

// MaxDocumentSize bounds a serialized evidence document.
const MaxDocumentSize = 4 << 20

// Document is the versioned evidence document. Only the parts a variant uses are set.
type Document struct {
	Version int    `json:"version"`
	Variant string `json:"variant"`
	// UserData is the caller's data the evidence binds (for aTLS, the hash of the certificate's public key).
	UserData []byte `json:"userData,omitempty"`
	// TPM holds TPM 2.0 evidence.
	TPM *TPMEvidence `json:"tpm,omitempty"`
	// SNP holds an AMD SEV-SNP attestation report and its certificates.
	SNP *SNPEvidence `json:"snp,omitempty"`
	// TDX holds an Intel TDX quote.
	TDX *TDXEvidence `json:"tdx,omitempty"`
	// Node is the name of the node, for the variant whose hardware binds it instead of an attestation key
	// certificate (qemu-sev-snp: the host launched the guest with HOST_DATA derived from the name). It counts
	// only once the variant's validator checked that binding.
	Node string `json:"node,omitempty"`
}

// MaxNodeNameSize bounds Document.Node (a DNS name at most, as Kubernetes node names are).
const MaxNodeNameSize = 253

// Size bounds of the hardware parts of a document. They mirror the limits of the parsers in the snp and tdx
// packages (whose tests check that they agree), so that oversized parts fail while the document is parsed.
const (
	// SNPReportSize is the size of an SEV-SNP attestation report; the report must have exactly this size.
	SNPReportSize = 0x4a0
	// MaxSNPCertSize bounds the certificate table and the certificate chain of an SEV-SNP report.
	MaxSNPCertSize = 1 << 20
	// MaxTDXQuoteSize bounds a TDX quote.
	MaxTDXQuoteSize = 64 << 10
	// MaxAKPublicSize bounds the encoded attestation key in TPMEvidence.AKPublic.
	MaxAKPublicSize = 2048
	// MaxHCLReportSize bounds the HCL report of an Azure paravisor (SNPEvidence.HCLReport and
	// TDXEvidence.HCLReport), as read from the vTPM NV index.
	MaxHCLReportSize = 16 << 10
)

// TPMEvidence is the TPM part of an evidence document.
type TPMEvidence struct {
	// AKCert is the DER certificate of the attestation key, issued by a CA the verifier pins (mini-vtpm).
	AKCert []byte `json:"akCert,omitempty"`
	// AKPublic is the attestation key as a DER SubjectPublicKeyInfo, for variants whose hardware report
	// binds the key through its REPORT_DATA instead of a certificate; such variants carry no AKCert.
	AKPublic []byte `json:"akPublic,omitempty"`
	// AKIntermediates are DER certificates between AKCert and the pinned root, if any.
	AKIntermediates [][]byte `json:"akIntermediates,omitempty"`
	// Quotes are signed PCR quotes, one per PCR bank.
	Quotes []Quote `json:"quotes"`
	// EventLog is the TCG (crypto-agile) event log of the measurements.
	EventLog []byte `json:"eventLog,omitempty"`
}

// Quote is one TPM2_Quote result with the PCR values it covers.
type Quote struct {
	// Quote is the TPMS_ATTEST structure the TPM signed.
	Quote []byte `json:"quote"`
	// Signature is the TPMT_SIGNATURE over Quote.
	Signature []byte `json:"signature"`
	// PCRs are the SHA-256 PCR values, by index; the quote's PCR digest covers them.
	PCRs map[uint32][]byte `json:"pcrs"`
}

// SNPEvidence is the AMD SEV-SNP part of an evidence document: the raw report and the certificates of the key
// that signed it. The certificates are candidates for the verifier to check against the AMD roots it embeds;
// they are never trusted because the evidence carries them.
type SNPEvidence struct {
	// Report is the raw attestation report (SNPReportSize bytes).
	Report []byte `json:"report"`
	// CertTable is the certificate table of the extended report, as the guest obtained it (configfs-tsm
	// auxblob or the certificate buffer of SNP_GET_EXT_REPORT).
	CertTable []byte `json:"certTable,omitempty"`
	// CertChain holds the certificates as PEM or concatenated DER (VCEK or VLEK, optionally ASK/ASVK and
	// ARK), for platforms that provide them outside the extended report.
	CertChain []byte `json:"certChain,omitempty"`
	// HCLReport is the HCL report of an Azure confidential VM's paravisor (azure-sev-snp only), as read from
	// vTPM NV index 0x01400001: the report above, wrapped with the runtime data whose hash is its
	// REPORT_DATA and which names the vTPM attestation key.
	HCLReport []byte `json:"hclReport,omitempty"`
}

// TDXEvidence is the Intel TDX part of an evidence document.
type TDXEvidence struct {
	// Quote is the raw TDX quote (v4 or v5) with its PCK certificate chain.
	Quote []byte `json:"quote"`
	// HCLReport is the HCL report of an Azure confidential VM's paravisor (azure-tdx only), as read from
	// vTPM NV index 0x01400001: the TD report the quote was made for, with the runtime data whose hash is
	// its REPORT_DATA and which names the vTPM attestation key.
	HCLReport []byte `json:"hclReport,omitempty"`
}

// ErrMalformedDocument wraps every parse error of an evidence document.
var ErrMalformedDocument = errors.New("malformed evidence document")

// Marshal serializes a document.
func (d *Document) Marshal() ([]byte, error) {
	return json.Marshal(d)
}

// ParseDocument parses a serialized evidence document strictly: size bound, no unknown fields, no trailing
// data, the supported version, a known variant.
func ParseDocument(raw []byte) (*Document, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrMalformedDocument)
	}
	if len(raw) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds the limit of %d", ErrMalformedDocument, len(raw), MaxDocumentSize)
	}
	var doc Document
	if err := strictjson.Decode(raw, &doc, MaxDocumentSize); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedDocument, err)
	}
	if doc.Version != DocumentVersion {
		return nil, fmt.Errorf("%w: version %d, this verifier reads version %d", ErrMalformedDocument, doc.Version, DocumentVersion)
	}
	variant, err := VariantByName(doc.Variant)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedDocument, err)
	}
	if err := doc.checkParts(variant); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedDocument, err)
	}
	if len(doc.UserData) > MaxUserDataSize {
		return nil, fmt.Errorf("%w: user data of %d bytes exceeds the limit of %d", ErrMalformedDocument, len(doc.UserData), MaxUserDataSize)
	}
	if err := doc.checkSizes(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedDocument, err)
	}
	return &doc, nil
}

// checkParts rejects parts that the variant's evidence never has. Whether the parts it needs are present
// is for the variant's validator to check.
func (d *Document) checkParts(v Variant) error {
	if d.TPM != nil && !v.VTPM {
		return fmt.Errorf("%s evidence has no TPM part, but the document carries one", v)
	}
	if d.SNP != nil && v.Hardware != SEVSNP {
		return fmt.Errorf("%s evidence has no SEV-SNP part, but the document carries one", v)
	}
	if d.TDX != nil && v.Hardware != TDX {
		return fmt.Errorf("%s evidence has no TDX part, but the document carries one", v)
	}
	if d.SNP != nil && len(d.SNP.HCLReport) > 0 && v.Name != AzureSEVSNP.Name {
		return fmt.Errorf("%s evidence has no HCL report (only %s does), but the document carries one", v, AzureSEVSNP)
	}
	if d.TDX != nil && len(d.TDX.HCLReport) > 0 && v.Name != AzureTDX.Name {
		return fmt.Errorf("%s evidence has no HCL report (only %s does), but the document carries one", v, AzureTDX)
	}
	if d.Node != "" && v.Name != QEMUSEVSNP.Name {
		return fmt.Errorf("%s evidence names its node by its attestation key, but the document names one besides (only %s does)", v, QEMUSEVSNP)
	}
	return nil
}

// checkSizes checks the size bounds of the evidence parts. What the parts contain is for the validator of the
// variant to check.
func (d *Document) checkSizes() error {
	if len(d.Node) > MaxNodeNameSize {
		return fmt.Errorf("node name of %d bytes exceeds the limit of %d", len(d.Node), MaxNodeNameSize)
	}
	if d.TPM != nil && len(d.TPM.AKPublic) > MaxAKPublicSize {
		return fmt.Errorf("attestation key of %d bytes exceeds the limit of %d", len(d.TPM.AKPublic), MaxAKPublicSize)
	}
	if s := d.SNP; s != nil {
		if len(s.Report) != SNPReportSize {
			return fmt.Errorf("SEV-SNP report of %d bytes, want exactly %d", len(s.Report), SNPReportSize)
		}
		if len(s.CertTable) > MaxSNPCertSize {
			return fmt.Errorf("SEV-SNP certificate table of %d bytes exceeds the limit of %d", len(s.CertTable), MaxSNPCertSize)
		}
		if len(s.CertChain) > MaxSNPCertSize {
			return fmt.Errorf("SEV-SNP certificate chain of %d bytes exceeds the limit of %d", len(s.CertChain), MaxSNPCertSize)
		}
		if len(s.HCLReport) > MaxHCLReportSize {
			return fmt.Errorf("HCL report of %d bytes exceeds the limit of %d", len(s.HCLReport), MaxHCLReportSize)
		}
	}
	if q := d.TDX; q != nil {
		if len(q.Quote) == 0 {
			return errors.New("the TDX part has no quote")
		}
		if len(q.Quote) > MaxTDXQuoteSize {
			return fmt.Errorf("TDX quote of %d bytes exceeds the limit of %d", len(q.Quote), MaxTDXQuoteSize)
		}
		if len(q.HCLReport) > MaxHCLReportSize {
			return fmt.Errorf("HCL report of %d bytes exceeds the limit of %d", len(q.HCLReport), MaxHCLReportSize)
		}
	}
	return nil
}

// AttestationKeySubject returns the name of the attested machine: the common name of the attestation key
// certificate, or for qemu-sev-snp the node name that the report's HOST_DATA binds (Node); "" when the
// document has none. It does not verify anything; use it to label evidence that a validator has accepted
// (the qemu-sev-snp validator checks the binding of Node).
func (d *Document) AttestationKeySubject() string {
	if d.TPM == nil {
		if d.SNP != nil && d.Variant == QEMUSEVSNP.Name {
			return d.Node
		}
		return ""
	}
	cert, err := x509.ParseCertificate(d.TPM.AKCert)
	if err != nil {
		return ""
	}
	return cert.Subject.CommonName
}
