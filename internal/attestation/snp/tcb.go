package snp

import (
	"fmt"
	"strings"
)

// Product is an AMD EPYC processor generation with SEV-SNP. Each has its own AMD root key, and the layout of
// its TCB version differs (see [DecodeTCB]).
type Product int

// The products this package knows. The zero value is no product.
const (
	ProductUnknown Product = iota
	Milan                  // 3rd generation EPYC (Zen 3), family 19h models 00h-0Fh
	Genoa                  // 4th generation EPYC (Zen 4), family 19h models 10h-1Fh and A0h-AFh
	Turin                  // 5th generation EPYC (Zen 5), family 1Ah models 00h-1Fh
)

// Products returns the known products.
func Products() []Product { return []Product{Milan, Genoa, Turin} }

func (p Product) String() string {
	switch p {
	case Milan:
		return "Milan"
	case Genoa:
		return "Genoa"
	case Turin:
		return "Turin"
	}
	return fmt.Sprintf("Product(%d)", int(p))
}

// ParseProduct parses a product name ("Milan", "Genoa", "Turin"; case-insensitive).
func ParseProduct(name string) (Product, error) {
	for _, p := range Products() {
		if strings.EqualFold(name, p.String()) {
			return p, nil
		}
	}
	return ProductUnknown, fmt.Errorf("%w %q (known: Milan, Genoa, Turin)", ErrUnknownProduct, name)
}

// MarshalText encodes the product name.
func (p Product) MarshalText() ([]byte, error) {
	if !p.valid() {
		return nil, fmt.Errorf("%w: %d", ErrUnknownProduct, int(p))
	}
	return []byte(p.String()), nil
}

// UnmarshalText decodes a product name.
func (p *Product) UnmarshalText(text []byte) error {
	v, err := ParseProduct(string(text))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

func (p Product) valid() bool { return p == Milan || p == Genoa || p == Turin }

// productFromCPUID maps the combined family and model of CPUID leaf 1 (as in report versions 3 and later)
// to a product.
func productFromCPUID(family, model uint8) (Product, error) {
	switch family {
	case 0x19:
		switch {
		case model <= 0x0f:
			return Milan, nil
		case model >= 0x10 && model <= 0x1f, model >= 0xa0 && model <= 0xaf:
			return Genoa, nil
		}
	case 0x1a:
		if model <= 0x1f {
			return Turin, nil
		}
	}
	return ProductUnknown, fmt.Errorf("%w: CPU family 0x%02x model 0x%02x", ErrUnknownProduct, family, model)
}

// productFromName maps the product name of a VCEK or VLEK certificate ("Milan-B0", "Genoa") to a product.
func productFromName(name string) (Product, error) {
	base, _, _ := strings.Cut(name, "-")
	return ParseProduct(base)
}

// RawTCB is a TCB_VERSION as it appears in a report: eight security patch levels (SPLs) packed into a
// little-endian 64-bit value. Its layout depends on the product; decode it with [DecodeTCB].
type RawTCB uint64

// TCB is a decoded TCB version: the security patch level of each firmware component. Higher is newer.
type TCB struct {
	// Bootloader is the SPL of the AMD secure processor bootloader.
	Bootloader uint8 `json:"bootloader"`
	// TEE is the SPL of the AMD secure processor operating system.
	TEE uint8 `json:"tee"`
	// SNP is the SPL of the SEV-SNP firmware.
	SNP uint8 `json:"snp"`
	// Microcode is the lowest microcode patch level of all cores.
	Microcode uint8 `json:"microcode"`
	// FMC is the SPL of the firmware's first mutable code (Turin only; always 0 for Milan and Genoa).
	FMC uint8 `json:"fmc,omitempty"`
}

// DecodeTCB decodes a raw TCB version for a product.
//
// Milan and Genoa (family 19h): byte 0 bootloader, byte 1 TEE, bytes 2-5 reserved, byte 6 SNP, byte 7
// microcode. Turin (family 1Ah): byte 0 FMC, byte 1 bootloader, byte 2 TEE, byte 3 SNP, bytes 4-6
// reserved, byte 7 microcode.
func DecodeTCB(p Product, raw RawTCB) (TCB, error) {
	b := func(i uint) uint8 { return uint8(uint64(raw) >> (8 * i)) }
	switch p {
	case Milan, Genoa:
		return TCB{Bootloader: b(0), TEE: b(1), SNP: b(6), Microcode: b(7)}, nil
	case Turin:
		return TCB{FMC: b(0), Bootloader: b(1), TEE: b(2), SNP: b(3), Microcode: b(7)}, nil
	}
	return TCB{}, fmt.Errorf("%w: cannot decode TCB version of %v", ErrUnknownProduct, p)
}

// EncodeTCB is the inverse of DecodeTCB; reserved bytes are zero.
func EncodeTCB(p Product, t TCB) (RawTCB, error) {
	var b [8]uint8
	switch p {
	case Milan, Genoa:
		if t.FMC != 0 {
			return 0, fmt.Errorf("%v has no FMC security patch level (got %d)", p, t.FMC)
		}
		b[0], b[1], b[6], b[7] = t.Bootloader, t.TEE, t.SNP, t.Microcode
	case Turin:
		b[0], b[1], b[2], b[3], b[7] = t.FMC, t.Bootloader, t.TEE, t.SNP, t.Microcode
	default:
		return 0, fmt.Errorf("%w: cannot encode TCB version of %v", ErrUnknownProduct, p)
	}
	var raw uint64
	for i := range b {
		raw |= uint64(b[i]) << (8 * i)
	}
	return RawTCB(raw), nil
}

// tcbComponent is one named SPL of a TCB, for component-wise comparison and messages.
type tcbComponent struct {
	name string
	val  uint8
}

func (t TCB) components(p Product) []tcbComponent {
	c := []tcbComponent{{"bootloader", t.Bootloader}, {"TEE", t.TEE}, {"SNP firmware", t.SNP}, {"microcode", t.Microcode}}
	if p == Turin {
		c = append([]tcbComponent{{"FMC", t.FMC}}, c...)
	}
	return c
}

// Below lists, for product p, every component of t that is lower than the same component of minimum, as
// "<component> <value> below minimum <minimum>". It returns nil if t meets the minimum.
func (t TCB) Below(p Product, minimum TCB) []string {
	got, want := t.components(p), minimum.components(p)
	var low []string
	for i := range got {
		if got[i].val < want[i].val {
			low = append(low, fmt.Sprintf("%s %d below minimum %d", got[i].name, got[i].val, want[i].val))
		}
	}
	return low
}

func (t TCB) String() string {
	s := fmt.Sprintf("bootloader=%d tee=%d snp=%d microcode=%d", t.Bootloader, t.TEE, t.SNP, t.Microcode)
	if t.FMC != 0 {
		s = fmt.Sprintf("fmc=%d ", t.FMC) + s
	}
	return s
}
