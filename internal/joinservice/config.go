package joinservice

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/validators"
	"github.com/constellation-dev/constellation/internal/nodedns"
	"github.com/constellation-dev/constellation/internal/registrymirror"
)

// Files of the join configuration directory (the keys of its ConfigMap).
const (
	MeasurementsFile = "measurements.json" // the cluster's measurement policy (JSON); empty for variants without a vTPM
	AKRootsFile      = "ak-roots.pem"      // CA certificates that certify nodes' attestation keys (mini-vtpm); empty otherwise
	ClusterIDFile    = "cluster-id"        // hex cluster ID, measured by joining nodes
	AttestationFile  = "attestation.json"  // the attestation variant and its hardware policy (see validators.ParsePolicy)
	// RegistryMirrorsFile holds the cluster's registry mirrors (JSON, see package registrymirror), which every
	// joining node gets; a configuration without mirrors may leave it out.
	RegistryMirrorsFile = "registry-mirrors.json"
	// DNSServersFile holds the nodes' DNS servers (JSON, see package nodedns), which every joining node gets; a
	// configuration without DNS servers leaves it out.
	DNSServersFile = "dns-servers.json"
	MACFile        = "mac" // hex HMAC-SHA256 of the other files under the master secret's join-config key
)

// MaxConfigFileSize bounds every file of the join configuration; a ConfigMap holds at most 1 MiB.
const MaxConfigFileSize = 1 << 20

// configFiles are the files Current reads, in order; the MAC covers them.
var configFiles = []string{MeasurementsFile, AKRootsFile, ClusterIDFile, AttestationFile, RegistryMirrorsFile}

// optionalFiles may be missing from a configuration: they then count, for the MAC too, as empty.
var optionalFiles = map[string]bool{RegistryMirrorsFile: true, DNSServersFile: true}

// extensionFiles are files added to the configuration after its MAC's first version: the MAC covers each of them
// that is not empty (name, length and content, after configFiles), so that the MAC of a configuration without
// them is what it always was, and adding, removing or changing one breaks it.
var extensionFiles = []string{DNSServersFile}

// ConfigMAC is the MAC of a join configuration's files under key (kms.Deriver.JoinConfigKey): HMAC-SHA256 over
// a version label and each file of configFiles, in order, with its name and length, then each non-empty file of
// extensionFiles likewise.
func ConfigMAC(key []byte, files map[string][]byte) []byte {
	m := hmac.New(sha256.New, key)
	io.WriteString(m, "constellation join configuration v1\x00")
	for _, name := range configFiles {
		fmt.Fprintf(m, "%s\x00%d\x00", name, len(files[name]))
		m.Write(files[name])
	}
	for _, name := range extensionFiles {
		if len(files[name]) > 0 {
			fmt.Fprintf(m, "%s\x00%d\x00", name, len(files[name]))
			m.Write(files[name])
		}
	}
	return m.Sum(nil)
}

// ConfigData returns the files of a join configuration: the attestation policy every joining node must
// meet, the cluster ID and the registry mirrors every joining node gets, authenticated with a MAC under macKey
// (kms.Deriver.JoinConfigKey), which only who holds the master secret can compute. The policy's measurements
// must not contain the cluster-ID PCR: the join service itself requires it fresh (zero).
func ConfigData(policy *validators.Policy, clusterID, macKey []byte, mirrors []registrymirror.Mirror) (map[string]string, error) {
	return ConfigDataWithDNS(policy, clusterID, macKey, mirrors, nil)
}

// ConfigDataWithDNS is [ConfigData] with the DNS servers every joining node gets (see package nodedns); without
// them the configuration is ConfigData's.
func ConfigDataWithDNS(policy *validators.Policy, clusterID, macKey []byte, mirrors []registrymirror.Mirror, dns []string) (map[string]string, error) {
	if policy == nil || len(clusterID) != 32 {
		return nil, errors.New("a join configuration needs an attestation policy and a 32-byte cluster ID")
	}
	if len(macKey) != 32 {
		return nil, errors.New("a join configuration needs the 32-byte key of its MAC")
	}
	if _, ok := policy.Measurements[measurements.PCRClusterID]; ok {
		return nil, fmt.Errorf("the measurements hold PCR %d, the cluster ID's; the join service requires it fresh (zero) itself", measurements.PCRClusterID)
	}
	// The policy must be enforceable, or every join would be refused.
	if _, err := validators.New(policy, validators.Options{}); err != nil {
		return nil, fmt.Errorf("join configuration: %w", err)
	}
	att, err := validators.MarshalPolicy(policy)
	if err != nil {
		return nil, err
	}
	var pcrs []byte
	if len(policy.Measurements) > 0 {
		if pcrs, err = json.MarshalIndent(policy.Measurements, "", "  "); err != nil {
			return nil, err
		}
	}
	rawMirrors, err := registrymirror.Marshal(mirrors)
	if err != nil {
		return nil, fmt.Errorf("join configuration: %w", err)
	}
	var rawDNS []byte
	if len(dns) > 0 {
		if rawDNS, err = nodedns.Marshal(dns); err != nil {
			return nil, fmt.Errorf("join configuration: %w", err)
		}
	}
	var roots bytes.Buffer
	for _, c := range policy.AKRoots {
		pem.Encode(&roots, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	data := map[string]string{
		MeasurementsFile:    string(pcrs),
		AKRootsFile:         roots.String(),
		ClusterIDFile:       hex.EncodeToString(clusterID),
		AttestationFile:     string(att),
		RegistryMirrorsFile: string(rawMirrors),
	}
	if len(rawDNS) > 0 {
		data[DNSServersFile] = string(rawDNS)
	}
	files := map[string][]byte{}
	for name, content := range data {
		files[name] = []byte(content)
	}
	data[MACFile] = hex.EncodeToString(ConfigMAC(macKey, files))
	return data, nil
}

// State is one version of the join configuration.
type State struct {
	// Variant is the attestation variant every joining node presents.
	Variant attestation.Variant
	// Policy is what the vTPM of a joining node must present (variants with a vTPM; nil otherwise): the
	// cluster's measurements and a fresh cluster-ID PCR (zero), so a node that belongs to a cluster, this or
	// another, cannot join again without a reboot.
	Policy    measurements.M
	AKRoots   []*x509.Certificate
	ClusterID []byte
	// RegistryMirrors are the cluster's registry mirrors, which the join service hands every node it admits.
	RegistryMirrors []registrymirror.Mirror
	// DNSServers are the nodes' DNS servers, which the join service hands every node it admits; none: no
	// resolver.
	DNSServers []string
	// Sets are the measurement sets a joining node may present (variants with a vTPM; nil otherwise), without
	// the cluster-ID PCR: the configuration's measurements, or the one or two sets of the measurement policy
	// update in force ([Config.FollowPolicy]). Policy is the first's fresh policy.
	Sets []measurements.M
	// Images are the node images of Sets, one per set in order (package policyupdate's ImageSet), as the update
	// in force names them; nil for the configuration's measurements and an update whose sets name no image.
	Images []string
	// Epoch is the epoch of the measurement policy update whose sets are in force (0: the configuration's).
	Epoch uint64

	attestation *validators.Policy // with Policy as its measurements
	opts        validators.Options
	validators  []attestation.Validator // one per set (one for variants without a vTPM)
}

// MemberValidator returns a validator that accepts nodes that belong to this cluster: the attestation
// policy with the cluster ID measured into PCR 15. It tells which node image a node runs by the set its
// evidence matched (policyupdate.ImageValidator; "" for a set that names none). A qemu-sev-snp node proves the
// membership with the cluster ID bound in its REPORT_DATA (validators.Policy.ClusterID); other variants without
// a vTPM cannot prove it, and are refused.
func (s *State) MemberValidator() (policyupdate.ImageValidator, error) {
	if !s.Variant.VTPM {
		if !validators.BindsCluster(s.Variant) {
			return nil, fmt.Errorf("%s evidence has no vTPM, so a node cannot prove that it belongs to this cluster (PCR %d); use a variant with a vTPM or qemu-sev-snp", s.Variant, measurements.PCRClusterID)
		}
		p := *s.attestation
		p.Fresh, p.ClusterID = false, s.ClusterID
		v, err := validators.New(&p, s.opts)
		if err != nil {
			return nil, err
		}
		return policyupdate.AnyImage([]attestation.Validator{v}, nil)
	}
	vs := make([]attestation.Validator, 0, len(s.Sets))
	for _, set := range s.Sets {
		p := *s.attestation
		p.Measurements = measurements.MemberPolicy(set, s.ClusterID)
		v, err := validators.New(&p, s.opts)
		if err != nil {
			return nil, err
		}
		vs = append(vs, v)
	}
	return policyupdate.AnyImage(vs, s.Images)
}

// MemberValidator returns the validator of the current configuration's members (see [State.MemberValidator]; it
// is a policyupdate.ImageValidator),
// made once per version of the configuration: the continuous attestation (package reattestation) checks every
// node against it.
func (c *Config) MemberValidator() (attestation.Validator, error) {
	s, err := c.Effective(context.Background())
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.memberOf != s {
		v, err := s.MemberValidator()
		if err != nil {
			return nil, err
		}
		c.memberOf, c.member = s, v
	}
	return c.member, nil
}

// Config is the join configuration in a directory, read again when its content changes. Kubernetes
// updates a mounted ConfigMap by swapping the directory's content atomically.
//
// The ConfigMap is an object any administrator of the cluster can edit, so its content counts only if its MAC
// verifies under the key derived from the cluster's master secret: the configuration the first control-plane
// node wrote at init (from the policy the CLI sent over aTLS), or one the CLI wrote later with the master
// secret. An edited configuration is refused and logged, and the service admits nobody until it is restored.
type Config struct {
	dir    string
	log    *slog.Logger
	opts   validators.Options
	macKey []byte

	mu      sync.Mutex
	sum     [32]byte
	current *State
	variant attestation.Variant // of the last valid configuration
	badSum  [32]byte            // of the last configuration whose MAC did not verify (logged once)
	// member validates the members of the configuration memberOf (see MemberValidator).
	memberOf *State
	member   attestation.Validator
	// policy, if set, tells the measurement policy update in force, whose sets replace the configuration's
	// measurements (see FollowPolicy); effective is the configuration with them, made from effectiveOf and
	// effectiveUpdate.
	policy          PolicySource
	effectiveOf     *State
	effectiveUpdate *policyupdate.Update
	effective       *State
}

// PolicySource returns the measurement policy update in force (nil: none since the cluster's init), from
// where an administrator of the cluster cannot write: the key service ([KeyServicePolicy]).
type PolicySource func(ctx context.Context) (*policyupdate.Update, error)

// FollowPolicy makes the measurement sets of the update in force, as src tells them at each join, replace the
// configuration's measurements: during an upgrade the old and the new image, after it the new one only. The
// configuration's measurements count only while there is no update: an administrator who puts back a
// configuration saved during an upgrade (its MAC verifies) changes nothing, and if src fails, nobody is
// admitted.
func (c *Config) FollowPolicy(src PolicySource) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.policy = src
}

// Effective returns the configuration as it is now ([Config.Current]) with the measurement sets in force
// ([Config.FollowPolicy]).
func (c *Config) Effective(ctx context.Context) (*State, error) {
	s, err := c.Current()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	src := c.policy
	c.mu.Unlock()
	if src == nil {
		return s, nil
	}
	u, err := src(ctx)
	if err != nil {
		return nil, fmt.Errorf("the measurement policy in force is unknown: %w", err)
	}
	if u == nil {
		return s, nil
	}
	if !s.Variant.VTPM {
		return nil, fmt.Errorf("a measurement policy update (epoch %d) is in force, but %s evidence has no vTPM, so its measurement sets do not apply; no node is admitted", u.Epoch, s.Variant)
	}
	if !bytes.Equal(u.ClusterID, s.ClusterID) {
		return nil, fmt.Errorf("the measurement policy update in force (epoch %d) is for another cluster than the join configuration's", u.Epoch)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.effective != nil && c.effectiveOf == s && c.effectiveUpdate.Same(u) {
		return c.effective, nil
	}
	e, err := s.withSets(u.Sets, u.Images, u.Epoch)
	if err != nil {
		return nil, fmt.Errorf("the measurement policy update in force (epoch %d): %w", u.Epoch, err)
	}
	c.logger().Info("measurement policy in force", "epoch", u.Epoch, "sets", len(u.Sets), "policy", u.String())
	c.effectiveOf, c.effectiveUpdate, c.effective = s, u, e
	return e, nil
}

// withSets returns a copy of s whose joining nodes present one of sets, of the node images images (nil: none
// named).
func (s *State) withSets(sets []measurements.M, images []string, epoch uint64) (*State, error) {
	e := *s
	e.Sets, e.Images, e.Epoch, e.validators = sets, images, epoch, nil
	for _, set := range sets {
		if _, ok := set[measurements.PCRClusterID]; ok {
			return nil, fmt.Errorf("a measurement set holds PCR %d, the cluster ID's; the join service requires it fresh (zero) itself", measurements.PCRClusterID)
		}
		p := *s.attestation
		p.Measurements = measurements.FreshPolicy(set)
		v, err := validators.New(&p, s.opts)
		if err != nil {
			return nil, err
		}
		e.validators = append(e.validators, v)
	}
	e.Policy = measurements.FreshPolicy(sets[0])
	e.attestation = s.attestation
	return &e, nil
}

// NewConfig reads the join configuration in dir, authenticated by its MAC under macKey
// (kms.Deriver.JoinConfigKey, see [FetchConfigKey]); it fails if the configuration is invalid.
func NewConfig(dir string, log *slog.Logger, macKey []byte) (*Config, error) {
	return newConfig(dir, log, macKey, validators.Options{})
}

// NewConfigWith is [NewConfig] with the trust of the validators, opts: the services pass none (NewConfig) and
// trust the embedded hardware roots; tests of the nodes that join pass the roots of their test PKI.
func NewConfigWith(dir string, log *slog.Logger, macKey []byte, opts validators.Options) (*Config, error) {
	return newConfig(dir, log, macKey, opts)
}

// newConfig is NewConfig with the trust of the validators: tests pass the roots of their test PKI.
func newConfig(dir string, log *slog.Logger, macKey []byte, opts validators.Options) (*Config, error) {
	if len(macKey) != 32 {
		return nil, errors.New("the join configuration needs the 32-byte key of its MAC")
	}
	opts.Log = log
	c := &Config{dir: dir, log: log, opts: opts, macKey: macKey}
	if _, err := c.Current(); err != nil {
		return nil, err
	}
	return c, nil
}

// Current returns the configuration as it is now. If the files changed and the new content is invalid, it
// returns an error: the service then admits nobody rather than work from a policy that was replaced.
func (c *Config) Current() (*State, error) {
	files := map[string][]byte{}
	h := sha256.New()
	for _, name := range slices.Concat(configFiles, extensionFiles, []string{MACFile}) {
		raw, err := readConfigFile(filepath.Join(c.dir, name))
		if errors.Is(err, fs.ErrNotExist) && optionalFiles[name] {
			raw, err = nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("join configuration: %w", err)
		}
		files[name] = raw
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(raw))
		h.Write(raw)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current != nil && sum == c.sum {
		return c.current, nil
	}
	// Nothing of the content counts before its MAC verifies.
	mac, err := hex.DecodeString(strings.TrimSpace(string(files[MACFile])))
	if err != nil || !hmac.Equal(mac, ConfigMAC(c.macKey, files)) {
		c.current = nil
		if sum != c.badSum {
			c.badSum = sum
			c.logger().Error("join configuration refused: it is not the one the control plane wrote (its MAC does not verify); it was edited outside 'constellation'. No node is admitted until the configuration is restored", "dir", c.dir)
		}
		return nil, fmt.Errorf("join configuration in %s: %w", c.dir, ErrConfigNotAuthentic)
	}
	s, err := parseState(files, c.opts)
	if err != nil {
		c.current = nil
		return nil, fmt.Errorf("join configuration in %s: %w", c.dir, err)
	}
	if c.log != nil {
		c.log.Info("join configuration loaded", "clusterID", hex.EncodeToString(s.ClusterID[:8]), "variant", s.Variant.Name, "pcrs", len(s.Policy))
	}
	c.sum, c.current, c.variant = sum, s, s.Variant
	return s, nil
}

// ErrConfigNotAuthentic says that the join configuration's MAC does not verify: somebody without the master
// secret (an administrator of the cluster, for example) changed it.
var ErrConfigNotAuthentic = errors.New("its MAC does not verify under the cluster's join-config key: it was changed by someone without the master secret")

// readConfigFile reads one file of the configuration, at most MaxConfigFileSize bytes (a ConfigMap
// holds at most 1 MiB).
func readConfigFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, MaxConfigFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > MaxConfigFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", filepath.Base(path), MaxConfigFileSize)
	}
	return raw, nil
}

func parseState(files map[string][]byte, opts validators.Options) (*State, error) {
	policy, err := validators.ParsePolicy(files[AttestationFile])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", AttestationFile, err)
	}
	variant, err := attestation.VariantByName(policy.Variant)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", AttestationFile, err)
	}
	if variant.VTPM {
		pcrs, err := measurements.Parse(files[MeasurementsFile])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", MeasurementsFile, err)
		}
		if _, ok := pcrs[measurements.PCRClusterID]; ok {
			return nil, fmt.Errorf("%s: PCR %d is the cluster ID's; the join service requires it fresh (zero) itself", MeasurementsFile, measurements.PCRClusterID)
		}
		policy.Measurements = measurements.FreshPolicy(pcrs)
	} else if len(bytes.TrimSpace(files[MeasurementsFile])) != 0 {
		return nil, fmt.Errorf("%s: %s evidence has no vTPM, so PCR measurements do not apply; leave the file empty", MeasurementsFile, variant)
	} else if validators.BindsCluster(variant) {
		// As PCR 15 zero above: a joining node must belong to no cluster yet, this or another.
		policy.Fresh = true
	}
	roots, err := parseAKRoots(files[AKRootsFile])
	if err != nil {
		return nil, err
	}
	if variant.Name == attestation.MiniVTPM.Name && len(roots) == 0 {
		return nil, fmt.Errorf("%s: want one or more PEM certificates and nothing else", AKRootsFile)
	}
	policy.AKRoots = roots
	id, err := hex.DecodeString(strings.TrimSpace(string(files[ClusterIDFile])))
	if err != nil || len(id) != 32 {
		return nil, fmt.Errorf("%s: want 64 hex digits", ClusterIDFile)
	}
	mirrors, err := registrymirror.Parse(files[RegistryMirrorsFile])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", RegistryMirrorsFile, err)
	}
	dns, err := nodedns.Parse(files[DNSServersFile])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", DNSServersFile, err)
	}
	v, err := validators.New(policy, opts)
	if err != nil {
		return nil, err
	}
	var sets []measurements.M
	if variant.VTPM {
		sets = []measurements.M{imageSet(policy.Measurements)}
	}
	return &State{Variant: variant, Policy: policy.Measurements, AKRoots: roots, ClusterID: id, RegistryMirrors: mirrors, DNSServers: dns, Sets: sets, attestation: policy, opts: opts, validators: []attestation.Validator{v}}, nil
}

// imageSet is a fresh policy without its cluster-ID PCR: the measurement set of a node image.
func imageSet(fresh measurements.M) measurements.M {
	set := maps.Clone(fresh)
	delete(set, measurements.PCRClusterID)
	return set
}

// parseAKRoots parses PEM certificates and nothing else; an empty file holds none.
func parseAKRoots(raw []byte) ([]*x509.Certificate, error) {
	var roots []*x509.Certificate
	rest := raw
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: unexpected PEM block %q", AKRootsFile, block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", AKRootsFile, err)
		}
		roots = append(roots, cert)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%s: want one or more PEM certificates and nothing else", AKRootsFile)
	}
	return roots, nil
}

// Validator returns a validator that checks evidence against the configuration current at each call.
func (c *Config) Validator() attestation.Validator { return reloadingValidator{c} }

type reloadingValidator struct{ c *Config }

// Variant returns the variant of the current configuration, or of the last valid one if the current one is
// invalid (Validate then refuses every node).
func (r reloadingValidator) Variant() attestation.Variant {
	_, _ = r.c.Current()
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	return r.c.variant
}

func (r reloadingValidator) Validate(ctx context.Context, evidence, nonce []byte) ([]byte, error) {
	s, err := r.c.Effective(ctx)
	if err != nil {
		r.c.logger().Error("join refused: no valid join configuration", "error", err)
		return nil, err
	}
	// The node must match one of the measurement sets in force (two during an upgrade).
	var errs []error
	var pcrs []uint32
	mismatched := true
	for i, v := range s.validators {
		userData, err := v.Validate(ctx, evidence, nonce)
		if err == nil {
			if s.Variant.VTPM {
				// Which peers the node trusted is measured in its PCR 14: it must have trusted only the sets in
				// force, or it may have been handed to a rogue join service and back.
				if err := r.checkPeerPolicy(evidence, s); err != nil {
					return nil, err
				}
			}
			return userData, nil
		}
		if len(s.validators) > 1 {
			err = fmt.Errorf("measurement set %d of %d: %w", i+1, len(s.validators), err)
		}
		errs = append(errs, err)
		var mismatch *measurements.Error
		if !errors.As(err, &mismatch) {
			mismatched = false
			continue
		}
		for _, m := range measurements.Fatal(mismatch.Mismatches) {
			if !slices.Contains(pcrs, m.PCR) {
				pcrs = append(pcrs, m.PCR)
			}
		}
	}
	err = errors.Join(errs...)
	// The node only sees a failed handshake; the operator reads here why (for a measurement mismatch:
	// which PCRs, expected and actual values, and the events behind them).
	if mismatched {
		slices.Sort(pcrs)
		r.c.logger().Warn("join refused: the node's measurements differ from the cluster's", "pcrs", pcrs, "node", subjectOf(evidence), "sets", len(s.validators), "epoch", s.Epoch, "error", err)
	} else {
		r.c.logger().Warn("join refused: evidence invalid", "node", subjectOf(evidence), "error", err)
	}
	return nil, err
}

// checkPeerPolicy refuses a node whose measured peer policy (see [checkPeerPolicy]) is not covered by the sets
// in force of s, and logs why.
func (r reloadingValidator) checkPeerPolicy(evidence []byte, s *State) error {
	hints, err := checkPeerPolicy(evidence, s.Sets)
	if err == nil {
		if len(hints) > 0 {
			r.c.logger().Info("the node's measured peer policy trusts only measurement sets in force", "node", subjectOf(evidence), "peerPolicy", hints[len(hints)-1].String(), "epoch", s.Epoch)
		}
		return nil
	}
	var uncovered *policyupdate.UncoveredSetError
	if errors.As(err, &uncovered) {
		set, _ := uncovered.Set.MarshalJSON()
		r.c.logger().Warn("join refused: the node trusted peers by a measurement set that is not in force; the host may have hinted a rogue image's measurements to it, or the hint is from an upgrade that ended (reboot the node with the current hint)", "node", subjectOf(evidence), "set", string(set), "sets", len(s.Sets), "epoch", s.Epoch, "error", err)
	} else {
		r.c.logger().Warn("join refused: the node's peer policy (PCR 14) is not explained by its event log", "node", subjectOf(evidence), "error", err)
	}
	return err
}

// subjectOf names the node an evidence document claims to be (unverified, for logs only).
func subjectOf(evidence []byte) string {
	doc, err := attestation.ParseDocument(evidence)
	if err != nil {
		return ""
	}
	return doc.AttestationKeySubject()
}

func (c *Config) logger() *slog.Logger {
	if c.log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.log
}
