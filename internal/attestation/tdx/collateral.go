package tdx

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/constellation-dev/constellation/internal/strictjson"
)

// Collateral errors.
var (
	// ErrMalformedCollateral wraps parse errors of collateral files.
	ErrMalformedCollateral = errors.New("TDX collateral: malformed")
	// ErrNoCollateral is returned when the collateral lacks a part the quote needs.
	ErrNoCollateral = errors.New("TDX collateral: missing")
	// ErrExpired wraps expiry of collateral and CRLs at the verification time.
	ErrExpired = errors.New("TDX collateral: expired")
	// ErrInvalidSignature wraps signatures that do not verify: quote, QE report, collateral, CRLs.
	ErrInvalidSignature = errors.New("invalid signature")
)

// Files of a collateral directory. Every file is the unmodified response of Intel's Provisioning
// Certification Service (PCS) API v4, or of a caching service that serves the same data (PCCS):
//
//	tcb_info_<fmspc>.json  TDX TCB info of one platform family, <fmspc> in 12 lower-case hex digits:
//	                       GET https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=<fmspc>
//	                       One file per FMSPC of the cluster's machines.
//	qe_identity.json       TDX QE identity:
//	                       GET https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity
//	tcb_signing_chain.pem  the URL-decoded TCB-Info-Issuer-Chain response header of the TCB info request
//	                       (the Intel SGX TCB Signing certificate, then the root): PEM certificates,
//	                       signing certificate first. A root in this file is ignored: only the embedded
//	                       Intel SGX Root CA is trusted.
//	root_ca.crl            CRL of the Intel SGX Root CA (DER or PEM):
//	                       GET https://certificates.trustedservices.intel.com/IntelSGXRootCA.der
//	pck_platform.crl       CRL of the Intel SGX PCK Platform CA (DER or PEM):
//	                       GET https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der
//	pck_processor.crl      CRL of the Intel SGX PCK Processor CA, same request with ca=processor.
//
// At least one PCK CRL is required; a quote whose PCK certificate is issued by a CA without CRL in the
// directory is rejected. Other files in the directory are ignored.
const (
	FileQEIdentity      = "qe_identity.json"
	FileTCBSigningChain = "tcb_signing_chain.pem"
	FileRootCACRL       = "root_ca.crl"
	FilePCKPlatformCRL  = "pck_platform.crl"
	FilePCKProcessorCRL = "pck_processor.crl"
	tcbInfoFilePrefix   = "tcb_info_"
	tcbInfoFileSuffix   = ".json"
	maxCollateralFile   = 1 << 20
	maxTCBLevels        = 1024
	maxAdvisoryIDs      = 1024
)

// TCBInfoFileName returns the name of the TCB info file for an FMSPC in a collateral directory.
func TCBInfoFileName(fmspc [6]byte) string {
	return tcbInfoFilePrefix + hex.EncodeToString(fmspc[:]) + tcbInfoFileSuffix
}

// Collateral is Intel's verification collateral, parsed but not yet verified: Verify checks its
// signatures and validity at the verification time.
type Collateral struct {
	tcbInfos     map[[6]byte]*TCBInfo
	qeIdentity   *QEIdentity
	signingChain []*x509.Certificate
	rootCRL      *x509.RevocationList
	pckCRLs      map[PCKCA]*x509.RevocationList
}

// CollateralFiles is the raw content of a collateral directory.
type CollateralFiles struct {
	// TCBInfos are the tcb_info_<fmspc>.json files, one per FMSPC.
	TCBInfos        [][]byte
	QEIdentity      []byte
	TCBSigningChain []byte
	RootCACRL       []byte
	// PCKPlatformCRL and PCKProcessorCRL are the PCK CRLs; at least one is required.
	PCKPlatformCRL  []byte
	PCKProcessorCRL []byte
}

// LoadCollateral reads and parses a collateral directory; the File constants document its layout.
func LoadCollateral(dir string) (*Collateral, error) {
	files, err := ReadCollateralFiles(dir)
	if err != nil {
		return nil, err
	}
	c, err := ParseCollateral(*files)
	if err != nil {
		return nil, fmt.Errorf("collateral directory %s: %w", dir, err)
	}
	return c, nil
}

// ReadCollateralFiles reads the raw files of a collateral directory (the File constants document its
// layout), for a verifier elsewhere that parses them with ParseCollateral. It checks that each TCB info file
// is named after its FMSPC and that the required files are there.
func ReadCollateralFiles(dir string) (*CollateralFiles, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading the TDX collateral directory: %w", err)
	}
	var files CollateralFiles
	read := func(name string, optional bool) ([]byte, error) {
		b, err := readLimited(filepath.Join(dir, name))
		if optional && errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s is not in the collateral directory %s", ErrNoCollateral, name, dir)
		}
		return b, err
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, tcbInfoFilePrefix) || !strings.HasSuffix(name, tcbInfoFileSuffix) {
			continue
		}
		b, err := read(name, false)
		if err != nil {
			return nil, err
		}
		info, err := ParseTCBInfo(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if want := TCBInfoFileName(info.FMSPC); want != name {
			return nil, fmt.Errorf("%w: %s holds the TCB info of FMSPC %x; name it %s", ErrMalformedCollateral, name, info.FMSPC, want)
		}
		files.TCBInfos = append(files.TCBInfos, b)
	}
	if files.QEIdentity, err = read(FileQEIdentity, false); err != nil {
		return nil, err
	}
	if files.TCBSigningChain, err = read(FileTCBSigningChain, false); err != nil {
		return nil, err
	}
	if files.RootCACRL, err = read(FileRootCACRL, false); err != nil {
		return nil, err
	}
	if files.PCKPlatformCRL, err = read(FilePCKPlatformCRL, true); err != nil {
		return nil, err
	}
	if files.PCKProcessorCRL, err = read(FilePCKProcessorCRL, true); err != nil {
		return nil, err
	}
	return &files, nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCollateralFile+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(b) > maxCollateralFile {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrMalformedCollateral, path, maxCollateralFile)
	}
	return b, nil
}

// ParseCollateral parses raw collateral strictly. It checks structure only.
func ParseCollateral(f CollateralFiles) (*Collateral, error) {
	c := &Collateral{tcbInfos: map[[6]byte]*TCBInfo{}, pckCRLs: map[PCKCA]*x509.RevocationList{}}
	if len(f.TCBInfos) == 0 {
		return nil, fmt.Errorf("%w: no TCB info (%s<fmspc>%s)", ErrNoCollateral, tcbInfoFilePrefix, tcbInfoFileSuffix)
	}
	for _, raw := range f.TCBInfos {
		info, err := ParseTCBInfo(raw)
		if err != nil {
			return nil, err
		}
		if _, dup := c.tcbInfos[info.FMSPC]; dup {
			return nil, fmt.Errorf("%w: two TCB infos for FMSPC %x", ErrMalformedCollateral, info.FMSPC)
		}
		c.tcbInfos[info.FMSPC] = info
	}
	var err error
	if c.qeIdentity, err = ParseQEIdentity(f.QEIdentity); err != nil {
		return nil, err
	}
	if len(f.TCBSigningChain) == 0 {
		return nil, fmt.Errorf("%w: no TCB signing certificate chain (%s)", ErrNoCollateral, FileTCBSigningChain)
	}
	if c.signingChain, err = parseCertChainPEM(f.TCBSigningChain, "TCB signing certificate chain"); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedCollateral, err)
	}
	if c.rootCRL, err = parseCRL(f.RootCACRL, "root CA CRL", FileRootCACRL); err != nil {
		return nil, err
	}
	if len(f.PCKPlatformCRL) == 0 && len(f.PCKProcessorCRL) == 0 {
		return nil, fmt.Errorf("%w: no PCK CRL (%s or %s)", ErrNoCollateral, FilePCKPlatformCRL, FilePCKProcessorCRL)
	}
	for ca, raw := range map[PCKCA][]byte{PCKCAPlatform: f.PCKPlatformCRL, PCKCAProcessor: f.PCKProcessorCRL} {
		if len(raw) == 0 {
			continue
		}
		crl, err := parseCRL(raw, "PCK "+string(ca)+" CRL", "pck_"+string(ca)+".crl")
		if err != nil {
			return nil, err
		}
		c.pckCRLs[ca] = crl
	}
	return c, nil
}

func parseCRL(raw []byte, what, file string) (*x509.RevocationList, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: no %s (%s)", ErrNoCollateral, what, file)
	}
	der := raw
	if block, rest := pem.Decode(raw); block != nil {
		if block.Type != "X509 CRL" || len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("%w: %s: want one PEM X509 CRL block or DER", ErrMalformedCollateral, what)
		}
		der = block.Bytes
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMalformedCollateral, what, err)
	}
	return crl, nil
}

// NextUpdate returns the earliest next-update time of the collateral's signed parts (and the expiry of
// the TCB signing certificate): from then on, quotes no longer verify with this collateral and the cache
// must be refreshed.
func (c *Collateral) NextUpdate() time.Time {
	if c == nil || c.qeIdentity == nil {
		return time.Time{}
	}
	t := c.qeIdentity.NextUpdate
	earlier := func(u time.Time) {
		if u.Before(t) {
			t = u
		}
	}
	for _, info := range c.tcbInfos {
		earlier(info.NextUpdate)
	}
	earlier(c.rootCRL.NextUpdate)
	for _, crl := range c.pckCRLs {
		earlier(crl.NextUpdate)
	}
	earlier(c.signingChain[0].NotAfter)
	return t
}

// TCBStatus is the status Intel assigns to a TCB level.
type TCBStatus string

// TCB statuses of Intel's collateral, and TCBStatusNotSupported.
const (
	TCBStatusUpToDate                          TCBStatus = "UpToDate"
	TCBStatusSWHardeningNeeded                 TCBStatus = "SWHardeningNeeded"
	TCBStatusConfigurationNeeded               TCBStatus = "ConfigurationNeeded"
	TCBStatusConfigurationAndSWHardeningNeeded TCBStatus = "ConfigurationAndSWHardeningNeeded"
	TCBStatusOutOfDate                         TCBStatus = "OutOfDate"
	TCBStatusOutOfDateConfigurationNeeded      TCBStatus = "OutOfDateConfigurationNeeded"
	TCBStatusRevoked                           TCBStatus = "Revoked"
	// TCBStatusNotSupported means that no TCB level of the collateral matches the platform: its TCB is
	// older than every level Intel lists, or the collateral does not apply to it. It never appears in
	// Intel's data, and no policy can accept it.
	TCBStatusNotSupported TCBStatus = "NotSupported"
)

func (s TCBStatus) known() bool {
	switch s {
	case TCBStatusUpToDate, TCBStatusSWHardeningNeeded, TCBStatusConfigurationNeeded,
		TCBStatusConfigurationAndSWHardeningNeeded, TCBStatusOutOfDate, TCBStatusOutOfDateConfigurationNeeded,
		TCBStatusRevoked:
		return true
	}
	return false
}

// TCBInfo is Intel's TDX TCB info for one platform family (FMSPC), version 3.
type TCBInfo struct {
	Version                 int
	IssueDate               time.Time
	NextUpdate              time.Time
	FMSPC                   [6]byte
	PCEID                   [2]byte
	TCBEvaluationDataNumber int
	// TDXModule is the identity every TDX module must have.
	TDXModule TDXModule
	// TDXModuleIdentities hold the TCB levels of TDX module versions (TEE_TCB_SVN[1] > 0).
	TDXModuleIdentities []TDXModuleIdentity
	// TCBLevels are the platform TCB levels, newest first.
	TCBLevels []TCBLevel

	signed    []byte
	signature []byte
}

// TDXModule is the expected signer and attributes of the TDX module.
type TDXModule struct {
	MRSigner       [48]byte
	Attributes     [8]byte
	AttributesMask [8]byte
}

// TDXModuleIdentity holds the TCB levels of one TDX module major version.
type TDXModuleIdentity struct {
	// ID is "TDX_" and the major version in two hex digits (TEE_TCB_SVN[1]).
	ID string
	TDXModule
	TCBLevels []SVNLevel
}

// TCBLevel is one platform TCB level of a TCB info.
type TCBLevel struct {
	SGXComponents [16]byte
	PCESVN        uint16
	TDXComponents [16]byte
	TCBDate       time.Time
	Status        TCBStatus
	AdvisoryIDs   []string
}

// SVNLevel is a TCB level identified by a single ISV SVN (quoting enclave, TDX module).
type SVNLevel struct {
	ISVSVN      uint16
	TCBDate     time.Time
	Status      TCBStatus
	AdvisoryIDs []string
}

// QEIdentity is Intel's identity of the TDX quoting enclave, version 2.
type QEIdentity struct {
	Version                 int
	IssueDate               time.Time
	NextUpdate              time.Time
	TCBEvaluationDataNumber int
	MiscSelect              uint32
	MiscSelectMask          uint32
	Attributes              [16]byte
	AttributesMask          [16]byte
	MRSigner                [32]byte
	ISVProdID               uint16
	// TCBLevels are the QE's TCB levels, newest first.
	TCBLevels []SVNLevel

	signed    []byte
	signature []byte
}

// JSON shapes of Intel's responses. Numbers that must be present are pointers.
type (
	jsonTCBInfoEnvelope struct {
		TCBInfo   json.RawMessage `json:"tcbInfo"`
		Signature string          `json:"signature"`
	}
	jsonQEIdentityEnvelope struct {
		EnclaveIdentity json.RawMessage `json:"enclaveIdentity"`
		Signature       string          `json:"signature"`
	}
	jsonTCBInfo struct {
		ID                      string              `json:"id"`
		Version                 *int                `json:"version"`
		IssueDate               string              `json:"issueDate"`
		NextUpdate              string              `json:"nextUpdate"`
		FMSPC                   string              `json:"fmspc"`
		PCEID                   string              `json:"pceId"`
		TCBType                 *int                `json:"tcbType"`
		TCBEvaluationDataNumber *int                `json:"tcbEvaluationDataNumber"`
		TDXModule               *jsonTDXModule      `json:"tdxModule"`
		TDXModuleIdentities     []jsonTDXModuleID   `json:"tdxModuleIdentities"`
		TCBLevels               []jsonPlatformLevel `json:"tcbLevels"`
	}
	jsonTDXModule struct {
		MRSigner       string `json:"mrsigner"`
		Attributes     string `json:"attributes"`
		AttributesMask string `json:"attributesMask"`
	}
	jsonTDXModuleID struct {
		ID string `json:"id"`
		jsonTDXModule
		TCBLevels []jsonSVNLevel `json:"tcbLevels"`
	}
	jsonComponent struct {
		SVN *int `json:"svn"`
	}
	jsonPlatformLevel struct {
		TCB struct {
			SGXComponents []jsonComponent `json:"sgxtcbcomponents"`
			PCESVN        *int            `json:"pcesvn"`
			TDXComponents []jsonComponent `json:"tdxtcbcomponents"`
		} `json:"tcb"`
		TCBDate     string   `json:"tcbDate"`
		TCBStatus   string   `json:"tcbStatus"`
		AdvisoryIDs []string `json:"advisoryIDs"`
	}
	jsonSVNLevel struct {
		TCB struct {
			ISVSVN *int `json:"isvsvn"`
		} `json:"tcb"`
		TCBDate     string   `json:"tcbDate"`
		TCBStatus   string   `json:"tcbStatus"`
		AdvisoryIDs []string `json:"advisoryIDs"`
	}
	jsonQEIdentity struct {
		ID                      string         `json:"id"`
		Version                 *int           `json:"version"`
		IssueDate               string         `json:"issueDate"`
		NextUpdate              string         `json:"nextUpdate"`
		TCBEvaluationDataNumber *int           `json:"tcbEvaluationDataNumber"`
		MiscSelect              string         `json:"miscselect"`
		MiscSelectMask          string         `json:"miscselectMask"`
		Attributes              string         `json:"attributes"`
		AttributesMask          string         `json:"attributesMask"`
		MRSigner                string         `json:"mrsigner"`
		ISVProdID               *int           `json:"isvprodid"`
		TCBLevels               []jsonSVNLevel `json:"tcbLevels"`
	}
)

// collateralParser collects the first error of a parse, naming the document and the field.
type collateralParser struct {
	what string
	err  error
}

func (p *collateralParser) fail(format string, args ...any) {
	if p.err == nil {
		p.err = fmt.Errorf("%w: %s: %s", ErrMalformedCollateral, p.what, fmt.Sprintf(format, args...))
	}
}

func (p *collateralParser) hexField(dst []byte, s, field string) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(dst) {
		p.fail("%s is %q, want %d hex digits", field, s, 2*len(dst))
		return
	}
	copy(dst, b)
}

func (p *collateralParser) time(s, field string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		p.fail("%s %q is not an RFC 3339 time", field, s)
	}
	return t
}

func (p *collateralParser) number(n *int, field string, max int) int {
	if n == nil {
		p.fail("no %s", field)
		return 0
	}
	if *n < 0 || *n > max {
		p.fail("%s is %d, outside 0-%d", field, *n, max)
		return 0
	}
	return *n
}

func (p *collateralParser) status(s, field string) TCBStatus {
	st := TCBStatus(s)
	if !st.known() {
		p.fail("%s %q is not a known TCB status", field, s)
	}
	return st
}

func (p *collateralParser) advisories(ids []string, field string) []string {
	if len(ids) > maxAdvisoryIDs {
		p.fail("%s has %d entries, more than %d", field, len(ids), maxAdvisoryIDs)
		return nil
	}
	return ids
}

func (p *collateralParser) signature(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != ecdsaSignatureSize {
		p.fail("signature is not %d hex digits (ECDSA P-256 r || s)", 2*ecdsaSignatureSize)
		return nil
	}
	return b
}

func (p *collateralParser) validity(issue, next string) (time.Time, time.Time) {
	i, n := p.time(issue, "issueDate"), p.time(next, "nextUpdate")
	if p.err == nil && !n.After(i) {
		p.fail("nextUpdate %s is not after issueDate %s", next, issue)
	}
	return i, n
}

func (p *collateralParser) svnLevels(levels []jsonSVNLevel, field string, max int) []SVNLevel {
	if len(levels) == 0 || len(levels) > maxTCBLevels {
		p.fail("%s has %d entries, want 1-%d", field, len(levels), maxTCBLevels)
		return nil
	}
	out := make([]SVNLevel, len(levels))
	for i, l := range levels {
		f := fmt.Sprintf("%s[%d]", field, i)
		out[i] = SVNLevel{
			ISVSVN:      uint16(p.number(l.TCB.ISVSVN, f+".tcb.isvsvn", max)),
			TCBDate:     p.time(l.TCBDate, f+".tcbDate"),
			Status:      p.status(l.TCBStatus, f+".tcbStatus"),
			AdvisoryIDs: p.advisories(l.AdvisoryIDs, f+".advisoryIDs"),
		}
	}
	return out
}

func (p *collateralParser) module(m jsonTDXModule, field string) TDXModule {
	var out TDXModule
	p.hexField(out.MRSigner[:], m.MRSigner, field+".mrsigner")
	p.hexField(out.Attributes[:], m.Attributes, field+".attributes")
	p.hexField(out.AttributesMask[:], m.AttributesMask, field+".attributesMask")
	return out
}

func (p *collateralParser) components(cs []jsonComponent, field string) [16]byte {
	var out [16]byte
	if len(cs) != len(out) {
		p.fail("%s has %d components, want %d", field, len(cs), len(out))
		return out
	}
	for i, c := range cs {
		out[i] = byte(p.number(c.SVN, fmt.Sprintf("%s[%d].svn", field, i), 255))
	}
	return out
}

// ParseTCBInfo parses a TDX TCB info response ({"tcbInfo": {...}, "signature": "..."}) strictly. The
// envelope may hold no other field; inside tcbInfo, fields this verifier does not use are ignored (they are
// covered by Intel's signature, which Verify checks over the exact bytes parsed here).
func ParseTCBInfo(raw []byte) (*TCBInfo, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: TCB info: empty", ErrMalformedCollateral)
	}
	if len(raw) > maxCollateralFile {
		return nil, fmt.Errorf("%w: TCB info: %d bytes exceeds the limit of %d", ErrMalformedCollateral, len(raw), maxCollateralFile)
	}
	var env jsonTCBInfoEnvelope
	if err := strictjson.Decode(raw, &env, maxCollateralFile); err != nil {
		return nil, fmt.Errorf("%w: TCB info: %w", ErrMalformedCollateral, err)
	}
	if len(env.TCBInfo) == 0 {
		return nil, fmt.Errorf("%w: TCB info: no tcbInfo object", ErrMalformedCollateral)
	}
	var j jsonTCBInfo
	if err := json.Unmarshal(env.TCBInfo, &j); err != nil {
		return nil, fmt.Errorf("%w: TCB info: %w", ErrMalformedCollateral, err)
	}
	p := &collateralParser{what: "TCB info"}
	info := &TCBInfo{signed: bytes.Clone(env.TCBInfo), signature: p.signature(env.Signature)}
	if j.ID != "TDX" {
		p.fail("id is %q, want \"TDX\" (an SGX TCB info cannot verify TDX quotes)", j.ID)
	}
	if info.Version = p.number(j.Version, "version", 1<<16); p.err == nil && info.Version != 3 {
		p.fail("version %d is not supported (want 3)", info.Version)
	}
	info.IssueDate, info.NextUpdate = p.validity(j.IssueDate, j.NextUpdate)
	p.hexField(info.FMSPC[:], j.FMSPC, "fmspc")
	p.hexField(info.PCEID[:], j.PCEID, "pceId")
	if t := p.number(j.TCBType, "tcbType", 1<<16); p.err == nil && t != 0 {
		p.fail("tcbType %d is not supported (want 0)", t)
	}
	info.TCBEvaluationDataNumber = p.number(j.TCBEvaluationDataNumber, "tcbEvaluationDataNumber", 1<<31-1)
	if j.TDXModule == nil {
		p.fail("no tdxModule")
	} else {
		info.TDXModule = p.module(*j.TDXModule, "tdxModule")
	}
	for i, m := range j.TDXModuleIdentities {
		f := fmt.Sprintf("tdxModuleIdentities[%d]", i)
		if len(m.ID) != len("TDX_00") || !strings.HasPrefix(m.ID, "TDX_") {
			p.fail("%s.id %q is not TDX_<two hex digits>", f, m.ID)
		}
		info.TDXModuleIdentities = append(info.TDXModuleIdentities, TDXModuleIdentity{
			ID:        m.ID,
			TDXModule: p.module(m.jsonTDXModule, f),
			TCBLevels: p.svnLevels(m.TCBLevels, f+".tcbLevels", 255),
		})
	}
	if len(j.TCBLevels) == 0 || len(j.TCBLevels) > maxTCBLevels {
		p.fail("tcbLevels has %d entries, want 1-%d", len(j.TCBLevels), maxTCBLevels)
	}
	for i, l := range j.TCBLevels {
		f := fmt.Sprintf("tcbLevels[%d]", i)
		info.TCBLevels = append(info.TCBLevels, TCBLevel{
			SGXComponents: p.components(l.TCB.SGXComponents, f+".tcb.sgxtcbcomponents"),
			PCESVN:        uint16(p.number(l.TCB.PCESVN, f+".tcb.pcesvn", 65535)),
			TDXComponents: p.components(l.TCB.TDXComponents, f+".tcb.tdxtcbcomponents"),
			TCBDate:       p.time(l.TCBDate, f+".tcbDate"),
			Status:        p.status(l.TCBStatus, f+".tcbStatus"),
			AdvisoryIDs:   p.advisories(l.AdvisoryIDs, f+".advisoryIDs"),
		})
	}
	if p.err != nil {
		return nil, p.err
	}
	return info, nil
}

// ParseQEIdentity parses a TDX QE identity response ({"enclaveIdentity": {...}, "signature": "..."})
// strictly, with the same rules as ParseTCBInfo.
func ParseQEIdentity(raw []byte) (*QEIdentity, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: QE identity: empty (%s)", ErrNoCollateral, FileQEIdentity)
	}
	if len(raw) > maxCollateralFile {
		return nil, fmt.Errorf("%w: QE identity: %d bytes exceeds the limit of %d", ErrMalformedCollateral, len(raw), maxCollateralFile)
	}
	var env jsonQEIdentityEnvelope
	if err := strictjson.Decode(raw, &env, maxCollateralFile); err != nil {
		return nil, fmt.Errorf("%w: QE identity: %w", ErrMalformedCollateral, err)
	}
	if len(env.EnclaveIdentity) == 0 {
		return nil, fmt.Errorf("%w: QE identity: no enclaveIdentity object", ErrMalformedCollateral)
	}
	var j jsonQEIdentity
	if err := json.Unmarshal(env.EnclaveIdentity, &j); err != nil {
		return nil, fmt.Errorf("%w: QE identity: %w", ErrMalformedCollateral, err)
	}
	p := &collateralParser{what: "QE identity"}
	id := &QEIdentity{signed: bytes.Clone(env.EnclaveIdentity), signature: p.signature(env.Signature)}
	if j.ID != "TD_QE" {
		p.fail("id is %q, want \"TD_QE\" (the identity of another enclave cannot verify TDX quotes)", j.ID)
	}
	if id.Version = p.number(j.Version, "version", 1<<16); p.err == nil && id.Version != 2 {
		p.fail("version %d is not supported (want 2)", id.Version)
	}
	id.IssueDate, id.NextUpdate = p.validity(j.IssueDate, j.NextUpdate)
	id.TCBEvaluationDataNumber = p.number(j.TCBEvaluationDataNumber, "tcbEvaluationDataNumber", 1<<31-1)
	var misc, miscMask [4]byte
	p.hexField(misc[:], j.MiscSelect, "miscselect")
	p.hexField(miscMask[:], j.MiscSelectMask, "miscselectMask")
	// The hex strings are 32-bit numbers, most significant digit first.
	id.MiscSelect = uint32(misc[0])<<24 | uint32(misc[1])<<16 | uint32(misc[2])<<8 | uint32(misc[3])
	id.MiscSelectMask = uint32(miscMask[0])<<24 | uint32(miscMask[1])<<16 | uint32(miscMask[2])<<8 | uint32(miscMask[3])
	p.hexField(id.Attributes[:], j.Attributes, "attributes")
	p.hexField(id.AttributesMask[:], j.AttributesMask, "attributesMask")
	p.hexField(id.MRSigner[:], j.MRSigner, "mrsigner")
	id.ISVProdID = uint16(p.number(j.ISVProdID, "isvprodid", 65535))
	id.TCBLevels = p.svnLevels(j.TCBLevels, "tcbLevels", 65535)
	if p.err != nil {
		return nil, p.err
	}
	return id, nil
}

// verifyP256 verifies an ECDSA P-256 signature in r || s form over SHA-256(msg).
func verifyP256(pub *ecdsa.PublicKey, msg, sig []byte) bool {
	if len(sig) != ecdsaSignatureSize {
		return false
	}
	h := sha256.Sum256(msg)
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:])
	return ecdsa.Verify(pub, h[:], r, s)
}

// checkValidity checks a signed collateral document's validity window at time now.
func checkValidity(what string, issue, next, now time.Time) error {
	if now.Before(issue) {
		return fmt.Errorf("%w: %s was issued at %s, after the verification time %s", ErrExpired, what, issue.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if now.After(next) {
		return fmt.Errorf("%w: %s expired at %s (verification time %s): refresh the collateral cache", ErrExpired, what, next.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return nil
}

// verifySigner verifies the root CA CRL and the TCB signing certificate at time now and returns the
// signing certificate's key.
func (c *Collateral) verifySigner(root *x509.Certificate, now time.Time) (*ecdsa.PublicKey, error) {
	if err := checkCRL(c.rootCRL, root, now, "root CA CRL"); err != nil {
		return nil, err
	}
	signer := c.signingChain[0]
	chain, err := verifyCert(signer, c.signingChain[1:], root, now)
	if err != nil {
		return nil, fmt.Errorf("%w: TCB signing certificate (subject %q) does not chain to the Intel SGX Root CA: %w", ErrUntrustedCertificate, signer.Subject.CommonName, err)
	}
	if len(chain) != 2 {
		return nil, fmt.Errorf("%w: TCB signing certificate chain has %d certificates up to the root, want 2", ErrUntrustedCertificate, len(chain))
	}
	if err := checkNotRevoked(c.rootCRL, signer, "TCB signing certificate", "root CA CRL"); err != nil {
		return nil, err
	}
	key, err := p256Key(signer)
	if err != nil {
		return nil, fmt.Errorf("%w: TCB signing certificate: %w", ErrUntrustedCertificate, err)
	}
	return key, nil
}

// verify checks the TCB info's signature and validity.
func (info *TCBInfo) verify(key *ecdsa.PublicKey, now time.Time) error {
	if !verifyP256(key, info.signed, info.signature) {
		return fmt.Errorf("%w: TCB info (FMSPC %x) signature does not verify with the TCB signing certificate", ErrInvalidSignature, info.FMSPC)
	}
	return checkValidity(fmt.Sprintf("TCB info (FMSPC %x)", info.FMSPC), info.IssueDate, info.NextUpdate, now)
}

// verify checks the QE identity's signature and validity.
func (id *QEIdentity) verify(key *ecdsa.PublicKey, now time.Time) error {
	if !verifyP256(key, id.signed, id.signature) {
		return fmt.Errorf("%w: QE identity signature does not verify with the TCB signing certificate", ErrInvalidSignature)
	}
	return checkValidity("QE identity", id.IssueDate, id.NextUpdate, now)
}
