// Package config is the cluster configuration file, constellation-conf.yaml: the provider, the attestation
// variant with the expected measurements, the optional external KMS, the nodes' registry mirrors (with
// credentials, for providers whose nodes have egress) and the nodes' DNS servers. Parsing is strict (unknown
// fields are errors) and Validate reports every problem with the field it concerns, never a credential.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/constellation-dev/constellation/internal/atomicfile"
	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/snp"
	"github.com/constellation-dev/constellation/internal/attestation/snp/launch"
	"github.com/constellation-dev/constellation/internal/attestation/tdx"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// FileName is the configuration file of a workspace.
const FileName = "constellation-conf.yaml"

// Version is the configuration format version.
const Version = "v1"

// Config is the content of constellation-conf.yaml.
type Config struct {
	Version     string      `json:"version"`
	Provider    Provider    `json:"provider"`
	Attestation Attestation `json:"attestation"`
	KMS         *KMS        `json:"kms,omitempty"`
	// RegistryMirrors are the registries whose images the nodes pull from a mirror, and only from there (see
	// package registrymirror). The list reaches the nodes with the attested init and through the join service,
	// never from the provider.
	RegistryMirrors []RegistryMirror `json:"registryMirrors,omitempty"`
	// Nodes configures the nodes' network beyond the cluster (providers whose nodes have egress only).
	Nodes *Nodes `json:"nodes,omitempty"`
}

// RegistryMirror is a registry mirror (registry, endpoints) with optional credentials for its endpoints.
type RegistryMirror struct {
	registrymirror.Mirror
	// Credentials authenticate the nodes to the mirror's endpoints, which must then all be https. They are a
	// secret: they reach the first node inside the attested init request and the other nodes inside the join
	// service's attested answer, and are kept in a Secret of the cluster and on the nodes' encrypted state
	// disks; never in a ConfigMap, a log or the CLI's output. Only for providers whose nodes have egress.
	Credentials *registrymirror.Auth `json:"credentials,omitempty"`
}

// Nodes configures the nodes' network beyond the cluster.
type Nodes struct {
	// DNS are the IP addresses of the DNS servers the nodes and the cluster's CoreDNS (as its upstream) use, at
	// most three. Without them the nodes have no resolver at all. Only for providers whose nodes have egress.
	DNS []string `json:"dns,omitempty"`
}

// Mirrors returns the registry mirrors without their credentials.
func (c *Config) Mirrors() []registrymirror.Mirror {
	var ms []registrymirror.Mirror
	for _, m := range c.RegistryMirrors {
		ms = append(ms, m.Mirror)
	}
	return ms
}

// MirrorCredentials returns the credentials of the registry mirrors that have them.
func (c *Config) MirrorCredentials() []registrymirror.Credentials {
	var cs []registrymirror.Credentials
	for _, m := range c.RegistryMirrors {
		if m.Credentials != nil {
			cs = append(cs, registrymirror.Credentials{Registry: m.Registry, Auth: *m.Credentials})
		}
	}
	return cs
}

// DNSServers returns the nodes' DNS servers; none if unset.
func (c *Config) DNSServers() []string {
	if c.Nodes == nil {
		return nil
	}
	return c.Nodes.DNS
}

// WithoutCredentials makes configuration entries of mirrors that have no credentials.
func WithoutCredentials(ms []registrymirror.Mirror) []RegistryMirror {
	var out []RegistryMirror
	for _, m := range ms {
		out = append(out, RegistryMirror{Mirror: m})
	}
	return out
}

// Provider selects and configures where nodes run. Exactly one provider is set.
type Provider struct {
	Mini *Mini `json:"mini,omitempty"`
	QEMU *QEMU `json:"qemu,omitempty"`
}

// QEMU configures the provider of QEMU virtual machines on this machine (UEFI, a software TPM per machine).
type QEMU struct {
	// ControlPlanes and Workers are the node counts.
	ControlPlanes int `json:"controlPlanes"`
	Workers       int `json:"workers"`
	// Image is the bootable disk image (node-image.raw); relative paths are relative to the configuration
	// file.
	Image string `json:"image"`
	// ImageDigest is the expected SHA-256 of the disk image ("sha256:<hex>"); a machine never boots another.
	ImageDigest string `json:"imageDigest"`
	// MemoryMiB is each machine's memory; 0 means 2048. The firmware measures the machine's memory size
	// (PCR 1), so the pinned firmware measurements hold only for the default.
	MemoryMiB int `json:"memoryMiB,omitempty"`
	// Accelerator is how QEMU runs the machines: "tcg" (emulation; the pinned firmware measurements were
	// recorded with it), "kvm" (the host's CPU, which the firmware measures: record the firmware PCRs again),
	// or "auto" (KVM where /dev/kvm opens, TCG otherwise). Empty means "tcg". SEV-SNP machines need "kvm"
	// (empty means "kvm" for them).
	Accelerator string `json:"accelerator,omitempty"`
	// Confidential is the confidential-computing technology of the machines: empty for none (UEFI with a
	// software TPM each, attestation variant qemu-vtpm), or "sev-snp" (AMD SEV-SNP guests on an SEV-SNP
	// host, attestation variant qemu-sev-snp, whose policy pins the launch measurement).
	Confidential string `json:"confidential,omitempty"`
	// SNP configures the launch of SEV-SNP machines; required with confidential: sev-snp, refused without.
	SNP *QEMUSNP `json:"snp,omitempty"`
}

// Confidential technologies of the QEMU provider.
const ConfidentialSEVSNP = "sev-snp"

// QEMUSNP is how the QEMU provider launches SEV-SNP machines. The launch measurement in
// attestation.snp.measurements is computed from these inputs ('constellation config generate qemu
// --confidential sev-snp'); launching with other ones gives machines that do not attest.
type QEMUSNP struct {
	// Firmware is the OVMF image built for SEV-SNP with kernel hashes (edk2 OvmfPkg/AmdSev), given to QEMU as
	// -bios. Relative paths are relative to the configuration file.
	Firmware string `json:"firmware"`
	// FirmwareDigest is the SHA-256 ("sha256:<hex>") of the firmware the launch measurement was computed
	// from; the CLI refuses to launch with another.
	FirmwareDigest string `json:"firmwareDigest"`
	// UKI is the disk image's unified kernel image: its kernel, initrd and command line are booted directly
	// (-kernel, -initrd, -append with kernel-hashes=on), so that the launch measurement covers them. Relative
	// paths are relative to the configuration file.
	UKI string `json:"uki"`
	// VCPUType is QEMU's CPU model (-cpu), one of those whose signature is known (launch.VCPUTypes): the
	// measurement depends on it.
	VCPUType string `json:"vcpuType"`
	// GuestFeatures are the SEV features KVM enables in each vCPU's VMSA; 0 means 0x1 (SNPActive only, the
	// default of QEMU 9.1 and later on Linux 6.11 and later). Hosts whose kernel enables DebugSwap need 0x21.
	GuestFeatures uint64 `json:"guestFeatures,omitempty"`
}

// DefaultSNPGuestFeatures are the guest features of an SEV-SNP machine whose configuration sets none.
const DefaultSNPGuestFeatures = launch.FeatureSNPActive

// Features returns the configured guest features, or DefaultSNPGuestFeatures.
func (s *QEMUSNP) Features() uint64 {
	if s.GuestFeatures == 0 {
		return DefaultSNPGuestFeatures
	}
	return s.GuestFeatures
}

// Mini configures the local provider.
type Mini struct {
	// ControlPlanes and Workers are the node counts.
	ControlPlanes int `json:"controlPlanes"`
	Workers       int `json:"workers"`
	// Image is the node image file (squashfs); relative paths are relative to the configuration file.
	Image string `json:"image"`
	// ImageDigest is the expected SHA-256 of the image ("sha256:<hex>"); a node never boots another image.
	ImageDigest string `json:"imageDigest"`
	// RegistryPort is the port on 127.0.0.1 of this machine where the provider's registry mirror takes pushes
	// (docker push localhost:<port>/...); 0 means 5001.
	RegistryPort int `json:"registryPort,omitempty"`
}

// Attestation is what a node must prove.
type Attestation struct {
	// Variant is the kind of evidence every node presents (see attestation.Variants).
	Variant string `json:"variant"`
	// Measurements are the expected PCR values of the nodes' TPM (mini-vtpm) or vTPM (the variants that
	// combine a hardware report with a vTPM quote). Variants without a TPM have none.
	Measurements measurements.M `json:"measurements,omitempty"`
	// SNP is the SEV-SNP policy of the variants whose evidence is an SEV-SNP report.
	SNP *SNP `json:"snp,omitempty"`
	// TDX is the TDX policy of the variants whose evidence is a TDX quote.
	TDX *TDX `json:"tdx,omitempty"`
}

// SNP is the SEV-SNP section of the attestation configuration: the policy every node's report must meet
// (the fields of snp.Policy: measurements, minimumTCB per product, vmpl, allow* flags, ID and author key
// digests, hostData, minimumFirmware per product; reportData is computed per request and allowDebug is
// refused) and where the verifier finds its offline CRL and VCEK caches. The AMD roots are embedded in the
// binary; nothing is fetched at verification time.
type SNP struct {
	snp.Policy
	// CRLDir is the offline cache of AMD certificate revocation lists (see snp.LoadCRLDir); relative paths
	// are relative to the configuration file. Without it, the policy must set allowMissingCRL.
	CRLDir string `json:"crlDir,omitempty"`
	// VCEKCacheDir is the offline cache of VCEK certificates (see snp.LoadVCEKCache), for evidence that
	// carries no VCEK; `constellation attestation fetch-vcek` fills it. A cached VCEK is verified like one
	// in the evidence. Relative paths are relative to the configuration file. Optional.
	VCEKCacheDir string `json:"vcekCacheDir,omitempty"`
}

// TDX is the TDX section of the attestation configuration: the policy every node's quote must meet (the
// fields of tdx.Policy: mrtd, rtmr0-3, mrseam, xfam, tdAttributes, acceptedTCBStatuses, minTEETCBSVN;
// reportData is computed per request) and where the verifier finds Intel's collateral. The Intel root is
// embedded in the binary; nothing is fetched at verification time.
type TDX struct {
	tdx.Policy
	// CollateralDir is the offline cache of Intel's collateral (see tdx.LoadCollateral); relative paths are
	// relative to the configuration file. Required.
	CollateralDir string `json:"collateralDir,omitempty"`
}

// KMS configures an external key management service for the master secret.
type KMS struct {
	KMIP *kms.KMIPConfig `json:"kmip,omitempty"`
}

// Parse reads a configuration strictly and validates it.
func Parse(raw []byte) (*Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		return nil, fmt.Errorf("parsing configuration: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Load reads and validates a configuration file.
func Load(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	c, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c.Attestation.resolve(filepath.Dir(path))
	if c.KMS != nil {
		// File paths in the KMS section are relative to the configuration file.
		if err := c.KMS.KMIP.Resolve(filepath.Dir(path)); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return c, nil
}

// LoadAttestation reads a configuration file strictly, validates its version and attestation section only,
// and returns that section with its directories resolved. It is for commands that verify evidence: they
// need no provider, and the configured provider may not be the one that runs the nodes they check.
func LoadAttestation(path string) (*Attestation, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	var c Config
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		return nil, fmt.Errorf("%s: parsing configuration: %w", path, err)
	}
	var p []string
	if c.Version != Version {
		p = append(p, fmt.Sprintf("version: %q is not supported, want %q", c.Version, Version))
	}
	p = append(p, c.Attestation.problems(Provider{})...)
	if len(p) > 0 {
		return nil, fmt.Errorf("%s: %w", path, &ValidationError{Problems: p})
	}
	c.Attestation.resolve(filepath.Dir(path))
	return &c.Attestation, nil
}

// ValidationError lists every invalid field.
type ValidationError struct{ Problems []string }

func (e *ValidationError) Error() string {
	return "invalid configuration:\n  " + strings.Join(e.Problems, "\n  ")
}

// Validate checks every field and reports all problems at once.
func (c *Config) Validate() error {
	var p []string
	if c.Version != Version {
		p = append(p, fmt.Sprintf("version: %q is not supported, want %q", c.Version, Version))
	}
	switch {
	case c.Provider.Mini != nil && c.Provider.QEMU != nil:
		p = append(p, "provider: both mini and qemu are set; set exactly one")
	case c.Provider.QEMU != nil:
		q := c.Provider.QEMU
		if q.ControlPlanes < 1 || q.ControlPlanes > 3 {
			p = append(p, fmt.Sprintf("provider.qemu.controlPlanes: %d, want 1 to 3", q.ControlPlanes))
		}
		if q.Workers < 0 || q.Workers > 4 {
			p = append(p, fmt.Sprintf("provider.qemu.workers: %d, want 0 to 4", q.Workers))
		}
		if q.Image == "" {
			p = append(p, "provider.qemu.image: no disk image; build one with 'make node-image'")
		}
		if !validDigest(q.ImageDigest) {
			p = append(p, fmt.Sprintf("provider.qemu.imageDigest: %q is not sha256:<64 hex digits>", q.ImageDigest))
		}
		if a := q.Accelerator; a != "" && a != "tcg" && a != "kvm" && a != "auto" {
			p = append(p, fmt.Sprintf("provider.qemu.accelerator: %q, want tcg, kvm or auto", a))
		}
		p = append(p, q.confidentialProblems()...)
		if q.MemoryMiB != 0 && (q.MemoryMiB < 1024 || q.MemoryMiB > 4096) {
			p = append(p, fmt.Sprintf("provider.qemu.memoryMiB: %d, want 1024 to 4096 (0 or none: 2048)", q.MemoryMiB))
		}
	case c.Provider.Mini == nil:
		p = append(p, "provider: no provider configured (set provider.mini or provider.qemu)")
	default:
		m := c.Provider.Mini
		if m.ControlPlanes < 1 || m.ControlPlanes > 5 {
			p = append(p, fmt.Sprintf("provider.mini.controlPlanes: %d, want 1 to 5", m.ControlPlanes))
		}
		if m.Workers < 0 || m.Workers > 10 {
			p = append(p, fmt.Sprintf("provider.mini.workers: %d, want 0 to 10", m.Workers))
		}
		if m.Image == "" {
			p = append(p, "provider.mini.image: no node image; build one with 'make node-image'")
		}
		if m.RegistryPort < 0 || m.RegistryPort > 65535 {
			p = append(p, fmt.Sprintf("provider.mini.registryPort: %d, want a port 1 to 65535 (0 or none: 5001)", m.RegistryPort))
		}
		if !validDigest(m.ImageDigest) {
			p = append(p, fmt.Sprintf("provider.mini.imageDigest: %q is not sha256:<64 hex digits>", m.ImageDigest))
		}
	}
	p = append(p, c.Attestation.problems(c.Provider)...)
	if c.KMS != nil {
		if c.KMS.KMIP == nil {
			p = append(p, "kms: set kms.kmip or remove the kms section")
		} else {
			check := *c.KMS.KMIP // Resolve rewrites the paths; here it only checks them
			if err := check.Resolve(""); err != nil {
				p = append(p, "kms: "+err.Error())
			}
		}
	}
	p = append(p, c.egressProblems()...)
	if len(p) > 0 {
		return &ValidationError{Problems: p}
	}
	return nil
}

func validDigest(s string) bool {
	hexPart, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(hexPart) != 64 {
		return false
	}
	for _, r := range hexPart {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}

// Marshal encodes the configuration as YAML, registry credentials redacted.
func (c *Config) Marshal() ([]byte, error) {
	return yaml.Marshal(c)
}

// Write writes the configuration to path atomically; an existing file is replaced only with overwrite. A
// configuration with registry credentials is never written: the CLI does not put secrets into files the operator
// did not write them into (and Marshal redacts them).
func (c *Config) Write(path string, overwrite bool) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if len(c.MirrorCredentials()) > 0 {
		return errors.New("the configuration holds registry credentials, which the CLI never writes into a file; add them to the configuration file yourself")
	}
	raw, err := c.Marshal()
	if err != nil {
		return err
	}
	if !overwrite {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s already exists; remove it or pass --force", path)
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return atomicfile.Write(path, append(Header(c.Attestation.Variant), raw...), 0o644)
}

// Header is the comment at the top of a written configuration: what it is, and the warning of the attestation
// variant (what its evidence cannot prove), if it has one.
func Header(variant string) []byte {
	header := []byte("# Constellation cluster configuration. The measurements are what every node must present.\n")
	if v, err := attestation.VariantByName(variant); err == nil && v.Warning() != "" {
		header = append(header, "# "+v.Warning()+"\n"...)
	}
	return header
}

// ImageDigest is the digest ("sha256:<hex>") of the configured provider's node image; empty without one.
func (c *Config) ImageDigest() string {
	switch {
	case c.Provider.Mini != nil:
		return c.Provider.Mini.ImageDigest
	case c.Provider.QEMU != nil:
		return c.Provider.QEMU.ImageDigest
	}
	return ""
}

// confidentialProblems lists the problems of the confidential launch of a QEMU configuration.
func (q *QEMU) confidentialProblems() []string {
	var p []string
	switch q.Confidential {
	case "":
		if q.SNP != nil {
			p = append(p, "provider.qemu.snp: set, but provider.qemu.confidential is not sev-snp; remove it or set confidential: sev-snp")
		}
		return p
	case ConfidentialSEVSNP:
	default:
		return append(p, fmt.Sprintf("provider.qemu.confidential: %q, want sev-snp or none", q.Confidential))
	}
	if q.Accelerator != "" && q.Accelerator != "kvm" {
		p = append(p, fmt.Sprintf("provider.qemu.accelerator: %q, but SEV-SNP machines run only under KVM on an SEV-SNP host; set kvm or remove it", q.Accelerator))
	}
	s := q.SNP
	if s == nil {
		return append(p, "provider.qemu.snp: confidential: sev-snp needs the launch inputs (firmware, uki, vcpuType); generate them with 'constellation config generate qemu --confidential sev-snp'")
	}
	if s.Firmware == "" {
		p = append(p, "provider.qemu.snp.firmware: no firmware; name an OVMF image built for SEV-SNP with kernel hashes (edk2 OvmfPkg/AmdSev)")
	}
	if !validDigest(s.FirmwareDigest) {
		p = append(p, fmt.Sprintf("provider.qemu.snp.firmwareDigest: %q is not sha256:<64 hex digits>", s.FirmwareDigest))
	}
	if s.UKI == "" {
		p = append(p, "provider.qemu.snp.uki: no unified kernel image; the machines boot it directly so that the launch measurement covers it")
	}
	if _, err := launch.VCPUSignature(s.VCPUType); err != nil {
		p = append(p, "provider.qemu.snp.vcpuType: "+err.Error())
	}
	if s.GuestFeatures != 0 && s.GuestFeatures&launch.FeatureSNPActive == 0 {
		p = append(p, fmt.Sprintf("provider.qemu.snp.guestFeatures: %#x lacks SNPActive (bit 0); every SEV-SNP guest has it (0 means 0x1)", s.GuestFeatures))
	}
	return p
}

// RelativeTo resolves path relative to the configuration file's directory, unless it is absolute.
func RelativeTo(configPath, path string) string {
	if path == "" || filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(filepath.Dir(configPath), path)
}

// ImagePath resolves the node image path relative to the configuration file's directory.
func (c *Config) ImagePath(configPath string) string {
	var image string
	switch {
	case c.Provider.Mini != nil:
		image = c.Provider.Mini.Image
	case c.Provider.QEMU != nil:
		image = c.Provider.QEMU.Image
	default:
		return ""
	}
	if filepath.IsAbs(image) {
		return image
	}
	return filepath.Join(filepath.Dir(configPath), image)
}
