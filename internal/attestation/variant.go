package attestation

import (
	"encoding/asn1"
	"errors"
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
	// Hardware is the confidential-computing technology whose signed report the evidence carries, or
	// NoHardware.
	Hardware Hardware
	// VTPM says whether the evidence carries a TPM 2.0 quote, whose PCR values a measurement policy checks.
	VTPM bool
	// HostVTPM says that the vTPM is implemented by the hypervisor, outside the confidential VM's protection.
	// The hardware report binds only the vTPM's attestation key, so the host can quote any PCR values with
	// it: the PCRs are not hardware-rooted. See [Variant.Warning].
	HostVTPM bool
}

// Warning is the one-line warning a verifier shows with evidence of the variant, or "" if there is none to
// show: for the variants whose vTPM the hypervisor implements, that their PCRs are not hardware-rooted.
func (v Variant) Warning() string {
	if !v.HostVTPM {
		return ""
	}
	return fmt.Sprintf("WARNING: %s PCRs are not hardware-rooted: the vTPM runs in the hypervisor, outside %s protection; "+
		"the %s report binds only its attestation key, so the host can forge every PCR (node image, boot parameters, cluster ID). "+
		"Only the launch measurement is verified by the hardware.", v.Name, v.Hardware.Title(), v.Hardware.Title())
}

// Title is the technology's name as vendors write it: "SEV-SNP", "TDX"; "" for NoHardware.
func (h Hardware) Title() string { return strings.ToUpper(string(h)) }

// Hardware names a confidential-computing technology that signs evidence.
type Hardware string

// The hardware a variant's evidence comes from.
const (
	// NoHardware: the evidence carries no hardware report (a TPM alone).
	NoHardware Hardware = ""
	// SEVSNP: an AMD SEV-SNP attestation report.
	SEVSNP Hardware = "sev-snp"
	// TDX: an Intel TDX quote.
	TDX Hardware = "tdx"
)

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
		VTPM:        true,
	}

	// QEMUVTPM is evidence from the TPM 2.0 of a virtual machine of the QEMU provider (UEFI firmware, the
	// node image's unified kernel image), whose attestation key the provider certifies after credential
	// activation against the TPM's endorsement key certificate, as for mini-vtpm. Its PCRs follow the UEFI
	// measured-boot scheme and its event log is the firmware's. There is no confidential hardware: the host
	// runs the TPM and could forge its PCRs; the variant proves the boot chain against a host that does not.
	QEMUVTPM = Variant{
		Name:        "qemu-vtpm",
		OID:         oid(1, 8),
		Description: "TPM 2.0 quote over PCRs 0-23 (SHA-256) of a UEFI virtual machine, attestation key certified by the QEMU provider",
		VTPM:        true,
	}

	// QEMUSEVSNP is an AMD SEV-SNP attestation report of a confidential VM on an on-premises QEMU/KVM host,
	// without a vTPM. REPORT_DATA binds the verifier's nonce and the caller's user data directly.
	QEMUSEVSNP = Variant{
		Name:        "qemu-sev-snp",
		OID:         oid(1, 2),
		Description: "AMD SEV-SNP report (VCEK chain to the embedded AMD root) whose REPORT_DATA binds nonce and user data; no vTPM",
		Hardware:    SEVSNP,
	}
	// QEMUTDX is an Intel TDX quote of a trust domain on an on-premises QEMU/KVM host, without a vTPM.
	// REPORT_DATA binds the verifier's nonce and the caller's user data directly.
	QEMUTDX = Variant{
		Name:        "qemu-tdx",
		OID:         oid(1, 3),
		Description: "Intel TDX quote (PCK chain to the embedded Intel root, offline collateral) whose REPORT_DATA binds nonce and user data; no vTPM",
		Hardware:    TDX,
	}
	// AWSSEVSNP is an AMD SEV-SNP report of an AWS EC2 instance (signed by a VLEK) whose REPORT_DATA binds
	// the attestation key of the instance's vTPM, combined with a quote of that vTPM. The vTPM (NitroTPM) is
	// implemented by the Nitro hypervisor, outside SEV-SNP protection: its PCRs are not hardware-rooted.
	AWSSEVSNP = Variant{
		Name:        "aws-sev-snp",
		OID:         oid(1, 4),
		Description: "AMD SEV-SNP report binding the vTPM attestation key, plus a TPM 2.0 quote over PCRs 0-23 (AWS); the vTPM is the hypervisor's, so its PCRs are not hardware-rooted",
		Hardware:    SEVSNP,
		VTPM:        true,
		HostVTPM:    true,
	}
	// GCPSEVSNP is an AMD SEV-SNP report of a Google Compute Engine instance whose REPORT_DATA binds the
	// attestation key of the instance's vTPM, combined with a quote of that vTPM. The vTPM is implemented by
	// the host's hypervisor, outside SEV-SNP protection: its PCRs are not hardware-rooted.
	GCPSEVSNP = Variant{
		Name:        "gcp-sev-snp",
		OID:         oid(1, 5),
		Description: "AMD SEV-SNP report binding the vTPM attestation key, plus a TPM 2.0 quote over PCRs 0-23 (GCP); the vTPM is the hypervisor's, so its PCRs are not hardware-rooted",
		Hardware:    SEVSNP,
		VTPM:        true,
		HostVTPM:    true,
	}
	// AzureSEVSNP is the AMD SEV-SNP report of an Azure confidential VM, which the paravisor (HCL) stores in
	// a vTPM NV index and whose REPORT_DATA binds the vTPM attestation key, combined with a vTPM quote.
	AzureSEVSNP = Variant{
		Name:        "azure-sev-snp",
		OID:         oid(1, 6),
		Description: "AMD SEV-SNP report from the Azure paravisor (HCL report in vTPM NV) binding the vTPM attestation key, plus a TPM 2.0 quote",
		Hardware:    SEVSNP,
		VTPM:        true,
	}
	// AzureTDX is the Intel TDX quote of an Azure confidential VM for the TD report the paravisor (HCL)
	// stores in a vTPM NV index, binding the vTPM attestation key, combined with a vTPM quote.
	AzureTDX = Variant{
		Name:        "azure-tdx",
		OID:         oid(1, 7),
		Description: "Intel TDX quote of the Azure paravisor's TD report (HCL report in vTPM NV) binding the vTPM attestation key, plus a TPM 2.0 quote",
		Hardware:    TDX,
		VTPM:        true,
	}
)

// registry is the single list of variants. Names and OIDs are stable: never reuse or renumber one.
var registry = []Variant{MiniVTPM, QEMUVTPM, QEMUSEVSNP, QEMUTDX, AWSSEVSNP, GCPSEVSNP, AzureSEVSNP, AzureTDX}

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

// ErrNotSupported is returned by the constructors of issuers and validators for variants that are registered
// (so that evidence and configurations can name them) but that this version cannot produce or check yet. The
// error says what is missing.
var ErrNotSupported = errors.New("not supported yet")
