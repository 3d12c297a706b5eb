package attestation

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
}

// TPMEvidence is the TPM part of an evidence document.
type TPMEvidence struct {
	// AKCert is the DER certificate of the attestation key, issued by a CA the verifier pins.
	AKCert []byte `json:"akCert"`
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
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var doc Document
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedDocument, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the document", ErrMalformedDocument)
	}
	if doc.Version != DocumentVersion {
		return nil, fmt.Errorf("%w: version %d, this verifier reads version %d", ErrMalformedDocument, doc.Version, DocumentVersion)
	}
	if _, err := VariantByName(doc.Variant); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedDocument, err)
	}
	if len(doc.UserData) > MaxUserDataSize {
		return nil, fmt.Errorf("%w: user data of %d bytes exceeds the limit of %d", ErrMalformedDocument, len(doc.UserData), MaxUserDataSize)
	}
	return &doc, nil
}

// AttestationKeySubject returns the common name of the attestation key certificate, which names the
// attested machine, or "" when the document has none. It does not verify anything; use it to label evidence
// that a validator has accepted.
func (d *Document) AttestationKeySubject() string {
	if d.TPM == nil {
		return ""
	}
	cert, err := x509.ParseCertificate(d.TPM.AKCert)
	if err != nil {
		return ""
	}
	return cert.Subject.CommonName
}
