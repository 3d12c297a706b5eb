package attestation

import (
	"encoding/asn1"
	"fmt"
	"slices"
	"strings"
)

// Variant names a kind of attestation evidence.
type Variant struct {
	// Name is the stable, human-readable identifier used in configuration files and evidence documents.
	Name string
	// OID identifies the variant inside X.509 certificates (the aTLS evidence extension).
	OID asn1.ObjectIdentifier
	// Description says in one line what the evidence is made of.
	Description string
}

func (v Variant) String() string { return v.Name }

// oidBase is the object identifier arc of this project's certificate extensions. It sits under the
// enterprise number RFC 5612 reserves for documentation; a registered enterprise number replaces it before
// the first release, in this one place.
var oidBase = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 32473, 1}

func oid(arcs ...int) asn1.ObjectIdentifier {
	return append(slices.Clone(oidBase), arcs...)
}

// The variants this product knows.
var (
	// MiniVTPM is evidence from a TPM 2.0 (software or hardware) whose attestation key is certified by the
	// local provider after credential activation against the TPM's endorsement key certificate.
	MiniVTPM = Variant{
		Name:        "mini-vtpm",
		OID:         oid(1, 1),
		Description: "TPM 2.0 quote over PCRs 0-23 (SHA-256), attestation key certified by the mini provider",
	}
)

var registry = []Variant{MiniVTPM}

// Variants returns every known variant.
func Variants() []Variant { return slices.Clone(registry) }

// VariantByName looks up a variant by its name.
func VariantByName(name string) (Variant, error) {
	for _, v := range registry {
		if v.Name == name {
			return v, nil
		}
	}
	return Variant{}, fmt.Errorf("unknown attestation variant %q (known: %s)", name, strings.Join(variantNames(), ", "))
}

// VariantByOID looks up a variant by its object identifier.
func VariantByOID(id asn1.ObjectIdentifier) (Variant, bool) {
	for _, v := range registry {
		if v.OID.Equal(id) {
			return v, true
		}
	}
	return Variant{}, false
}

// IsVariantOID reports whether id lies in this project's evidence extension arc.
func IsVariantOID(id asn1.ObjectIdentifier) bool {
	return len(id) > len(oidBase) && slices.Equal(id[:len(oidBase)], oidBase)
}

func variantNames() []string {
	names := make([]string, len(registry))
	for i, v := range registry {
		names[i] = v.Name
	}
	return names
}
