package snp

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"strings"
)

// MaxCertDataSize bounds a certificate table or certificate bundle. Genuine tables hold three certificates
// of about 1.5 KiB each and are padded to a few pages.
const MaxCertDataSize = 1 << 20

// GUIDs of the certificate table of an extended report (AMD Guest Hypervisor Communication Block
// Standardization, "Certificate table"), in their binary form: the bytes in the order of the text (RFC 4122
// byte order), as hosts write them.
var (
	guidVCEK = mustGUID("63da758d-e664-4564-adc5-f4b93be8accd")
	guidVLEK = mustGUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
	guidASK  = mustGUID("4ab7b379-bbac-4fe4-a02f-05aef327c782") // also the ASVK of a VLEK chain
	guidARK  = mustGUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
)

type guid [16]byte

// mustGUID encodes a GUID string in the binary form of the certificate table.
func mustGUID(s string) guid {
	h, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(h) != 16 {
		panic("snp: invalid GUID constant " + s)
	}
	return guid(h)
}

func (g guid) String() string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", g[0:4], g[4:6], g[6:8], g[8:10], g[10:16])
}

// Certificates are the certificates that accompany a report. Each may be nil. None of them is trusted:
// [Verifier.Verify] checks them against the embedded AMD roots.
type Certificates struct {
	// VCEK or VLEK certifies the key that signed the report.
	VCEK *x509.Certificate
	VLEK *x509.Certificate
	// Intermediate is the ASK (for a VCEK) or the ASVK (for a VLEK).
	Intermediate *x509.Certificate
	// ARK is the AMD root key. If present, it must be the embedded ARK of the report's product.
	ARK *x509.Certificate
}

const certTableEntrySize = 24

// ParseCertTable parses the certificate table of an extended attestation report (the auxblob of
// configfs-tsm or the certificate buffer of SNP_GET_EXT_REPORT): entries of GUID, offset and length,
// terminated by an all-zero entry, followed by the DER certificates they point to.
//
// The parser rejects: a table without terminator, offsets into the table, ranges beyond the data or
// overlapping each other, empty or duplicate entries, certificates that are not exactly one DER
// certificate, and non-zero bytes that no entry covers. Zero padding after the certificates is allowed
// (the kernel hands out page-sized buffers). Entries with other GUIDs are checked for bounds and ignored.
func ParseCertTable(data []byte) (*Certificates, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty certificate table", ErrMalformedCertificates)
	}
	if len(data) > MaxCertDataSize {
		return nil, fmt.Errorf("%w: certificate table of %d bytes exceeds the limit of %d", ErrMalformedCertificates, len(data), MaxCertDataSize)
	}
	type entry struct {
		id          guid
		off, length uint64
	}
	var entries []entry
	headerEnd := -1
	for pos := 0; ; pos += certTableEntrySize {
		if pos+certTableEntrySize > len(data) {
			return nil, fmt.Errorf("%w: certificate table truncated: entry %d at offset %d needs %d bytes, %d left (no terminating zero entry)", ErrMalformedCertificates, len(entries), pos, certTableEntrySize, len(data)-pos)
		}
		var e entry
		copy(e.id[:], data[pos:pos+16])
		e.off = uint64(binary.LittleEndian.Uint32(data[pos+16:]))
		e.length = uint64(binary.LittleEndian.Uint32(data[pos+20:]))
		if e.id == (guid{}) && e.off == 0 && e.length == 0 {
			headerEnd = pos + certTableEntrySize
			break
		}
		entries = append(entries, e)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("%w: certificate table has no entries", ErrMalformedCertificates)
	}
	covered := make([]bool, len(data))
	for i := range headerEnd {
		covered[i] = true
	}
	certs := &Certificates{}
	seen := map[guid]bool{}
	for i, e := range entries {
		if e.id == (guid{}) {
			return nil, fmt.Errorf("%w: certificate table entry %d has a zero GUID", ErrMalformedCertificates, i)
		}
		if seen[e.id] {
			return nil, fmt.Errorf("%w: certificate table has two entries with GUID %v", ErrMalformedCertificates, e.id)
		}
		seen[e.id] = true
		if e.length == 0 {
			return nil, fmt.Errorf("%w: certificate table entry %d (%v) is empty", ErrMalformedCertificates, i, e.id)
		}
		if e.off < uint64(headerEnd) {
			return nil, fmt.Errorf("%w: certificate table entry %d (%v) points at offset %d, inside the %d-byte table header", ErrMalformedCertificates, i, e.id, e.off, headerEnd)
		}
		if e.off+e.length > uint64(len(data)) {
			return nil, fmt.Errorf("%w: certificate table entry %d (%v) spans bytes %d-%d, beyond the %d bytes of data (truncated)", ErrMalformedCertificates, i, e.id, e.off, e.off+e.length-1, len(data))
		}
		for j := e.off; j < e.off+e.length; j++ {
			if covered[j] {
				return nil, fmt.Errorf("%w: certificate table entry %d (%v) overlaps another entry or the header at byte %d", ErrMalformedCertificates, i, e.id, j)
			}
			covered[j] = true
		}
		der := data[e.off : e.off+e.length]
		var dst **x509.Certificate
		var role string
		switch e.id {
		case guidVCEK:
			dst, role = &certs.VCEK, "VCEK"
		case guidVLEK:
			dst, role = &certs.VLEK, "VLEK"
		case guidASK:
			dst, role = &certs.Intermediate, "ASK"
		case guidARK:
			dst, role = &certs.ARK, "ARK"
		default:
			continue
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: %s certificate in the table: %w", ErrMalformedCertificates, role, err)
		}
		*dst = cert
	}
	for i, c := range covered {
		if !c && data[i] != 0 {
			return nil, fmt.Errorf("%w: certificate table has %d unreferenced non-zero bytes starting at offset %d (trailing data)", ErrMalformedCertificates, countNonZero(data[i:], covered[i:]), i)
		}
	}
	return certs, nil
}

func countNonZero(b []byte, covered []bool) int {
	n := 0
	for i := range b {
		if !covered[i] && b[i] != 0 {
			n++
		}
	}
	return n
}

// MarshalCertTable encodes certificates as a certificate table (the inverse of ParseCertTable). The ASK or
// ASVK is stored under the ASK GUID.
func MarshalCertTable(c *Certificates) []byte {
	type item struct {
		id  guid
		der []byte
	}
	var items []item
	for _, it := range []struct {
		id   guid
		cert *x509.Certificate
	}{{guidVCEK, c.VCEK}, {guidVLEK, c.VLEK}, {guidASK, c.Intermediate}, {guidARK, c.ARK}} {
		if it.cert != nil {
			items = append(items, item{it.id, it.cert.Raw})
		}
	}
	header := (len(items) + 1) * certTableEntrySize
	out := make([]byte, header)
	for i, it := range items {
		e := out[i*certTableEntrySize:]
		copy(e[:16], it.id[:])
		binary.LittleEndian.PutUint32(e[16:], uint32(len(out)))
		binary.LittleEndian.PutUint32(e[20:], uint32(len(it.der)))
		out = append(out, it.der...)
	}
	return out
}

// ParseCertificates parses AMD certificates given as PEM (one or more CERTIFICATE blocks, as served by the
// AMD key distribution service and cloud providers) or as concatenated DER. It assigns each certificate its
// role from the subject common name: SEV-VCEK, SEV-VLEK, SEV-<product> (ASK), SEV-VLEK-<product> (ASVK),
// ARK-<product>. Unknown names, duplicate roles, an ASK together with an ASVK, and data other than
// certificates and white space are errors.
func ParseCertificates(data []byte) (*Certificates, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("%w: no certificate data", ErrMalformedCertificates)
	}
	if len(data) > MaxCertDataSize {
		return nil, fmt.Errorf("%w: %d bytes of certificates exceed the limit of %d", ErrMalformedCertificates, len(data), MaxCertDataSize)
	}
	var list []*x509.Certificate
	if trimmed := bytes.TrimSpace(data); bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		rest := trimmed
		for len(rest) > 0 {
			if !bytes.HasPrefix(rest, []byte("-----BEGIN")) {
				return nil, fmt.Errorf("%w: %d bytes after certificate %d are not a PEM block", ErrMalformedCertificates, len(rest), len(list))
			}
			block, r := pem.Decode(rest)
			if block == nil {
				return nil, fmt.Errorf("%w: %d bytes after certificate %d are not a PEM block", ErrMalformedCertificates, len(rest), len(list))
			}
			if block.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("%w: PEM block %d has type %q, want CERTIFICATE", ErrMalformedCertificates, len(list), block.Type)
			}
			if len(block.Headers) != 0 {
				return nil, fmt.Errorf("%w: PEM block %d has headers", ErrMalformedCertificates, len(list))
			}
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%w: certificate %d: %w", ErrMalformedCertificates, len(list), err)
			}
			list = append(list, cert)
			rest = bytes.TrimSpace(r)
		}
	} else {
		var err error
		list, err = x509.ParseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("%w: DER certificates: %w", ErrMalformedCertificates, err)
		}
	}
	certs := &Certificates{}
	for i, cert := range list {
		cn := cert.Subject.CommonName
		var dst **x509.Certificate
		switch {
		case cn == "SEV-VCEK":
			dst = &certs.VCEK
		case cn == "SEV-VLEK":
			dst = &certs.VLEK
		case strings.HasPrefix(cn, "ARK-"):
			dst = &certs.ARK
		case strings.HasPrefix(cn, "SEV-"):
			dst = &certs.Intermediate
		default:
			return nil, fmt.Errorf("%w: certificate %d has subject %q, not an AMD SEV certificate", ErrMalformedCertificates, i, cn)
		}
		if *dst != nil {
			return nil, fmt.Errorf("%w: certificates %q and %q have the same role", ErrMalformedCertificates, (*dst).Subject.CommonName, cn)
		}
		*dst = cert
	}
	return certs, nil
}

// Merge adds the certificates of other to c. A role that both hold is an error, even with the same
// certificate: evidence states each certificate once.
func (c *Certificates) Merge(other *Certificates) error {
	if other == nil {
		return nil
	}
	roles := []struct {
		role     string
		dst, src **x509.Certificate
	}{{"VCEK", &c.VCEK, &other.VCEK}, {"VLEK", &c.VLEK, &other.VLEK}, {"ASK or ASVK", &c.Intermediate, &other.Intermediate}, {"ARK", &c.ARK, &other.ARK}}
	for _, r := range roles {
		if *r.src != nil && *r.dst != nil {
			return fmt.Errorf("%w: two %s certificates", ErrMalformedCertificates, r.role)
		}
	}
	for _, r := range roles {
		if *r.src != nil {
			*r.dst = *r.src
		}
	}
	return nil
}
