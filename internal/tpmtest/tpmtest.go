// Package tpmtest provides real TPMs for tests and benchmarks: the reference TPM (go-tpm-tools' simulator),
// provisioned with an endorsement key certificate from a test manufacturer CA, and an AK CA that certifies
// attestation keys after credential activation. Nothing in here is a fake.
package tpmtest

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"io"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/constellation-dev/constellation/internal/attestation/akca"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/cadir"
	"github.com/constellation-dev/constellation/internal/swtpm"
)

// NewCACert creates a self-signed ECDSA P-256 CA certificate and key.
func NewCACert(commonName string, validity time.Duration) (crypto.Signer, *x509.Certificate, error) {
	return cadir.Generate(commonName, time.Now().Add(validity))
}

// Manufacturer is a test TPM manufacturer: it writes EK certificates into TPMs.
type Manufacturer struct {
	Key  crypto.Signer
	Cert *x509.Certificate
}

// NewManufacturer creates a manufacturer with a fresh root.
func NewManufacturer() (*Manufacturer, error) {
	key, cert, err := NewCACert("Test TPM Manufacturer Root", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	return &Manufacturer{Key: key, Cert: cert}, nil
}

// Provision writes an RSA EK certificate for the TPM's EK into NV index 0x01c00002, as a TPM vendor does.
func (m *Manufacturer) Provision(rw io.ReadWriter) error {
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		return fmt.Errorf("creating endorsement key: %w", err)
	}
	pub := ek.PublicKey()
	ek.Close()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:       serial,
		NotBefore:          time.Now().Add(-time.Hour),
		NotAfter:           time.Now().Add(24 * time.Hour),
		KeyUsage:           x509.KeyUsageKeyEncipherment,
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{akca.OIDEKCertificate},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.Cert, pub, m.Key)
	if err != nil {
		return fmt.Errorf("signing EK certificate: %w", err)
	}
	idx := tpmutil.Handle(client.EKCertNVIndexRSA)
	attrs := tpm2.AttrOwnerWrite | tpm2.AttrOwnerRead | tpm2.AttrAuthRead | tpm2.AttrPPRead | tpm2.AttrNoDA
	if err := tpm2.NVDefineSpace(rw, tpm2.HandleOwner, idx, "", "", nil, attrs, uint16(len(der))); err != nil {
		return fmt.Errorf("defining EK certificate NV index: %w", err)
	}
	const chunk = 512
	for off := 0; off < len(der); off += chunk {
		end := min(off+chunk, len(der))
		if err := tpm2.NVWrite(rw, tpm2.HandleOwner, idx, "", der[off:end], uint16(off)); err != nil {
			return fmt.Errorf("writing EK certificate: %w", err)
		}
	}
	return nil
}

// Simulator starts the reference TPM simulator, provisioned by m. Only one simulator runs per process at a
// time; Get blocks until the previous one is closed.
func (m *Manufacturer) Simulator() (*simulator.Simulator, error) {
	sim, err := simulator.Get()
	if err != nil {
		return nil, fmt.Errorf("starting TPM simulator: %w", err)
	}
	if err := m.Provision(sim); err != nil {
		sim.Close()
		return nil, err
	}
	return sim, nil
}

// NewAKCA creates an AK CA trusting the given manufacturer roots.
func NewAKCA(ekRoots ...*x509.Certificate) (*akca.CA, error) {
	key, cert, err := NewCACert("Test Provider AK CA", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	return akca.New(key, cert, ekRoots)
}

// Measure extends PCR pcr with an event and records it in log, as measured-boot firmware does.
func Measure(rw io.ReadWriter, log *eventlog.Builder, pcr uint32, typ eventlog.EventType, data []byte) error {
	ev := log.Append(pcr, typ, data)
	if err := tpm2.PCRExtend(rw, tpmutil.Handle(pcr), tpm2.AlgSHA256, ev.Digest[:], ""); err != nil {
		return fmt.Errorf("extending PCR %d: %w", pcr, err)
	}
	return nil
}

// Node is an enrolled, measured TPM with an issuer, as a booted node has.
type Node struct {
	TPM    io.ReadWriter
	CA     *akca.CA
	Issuer *vtpm.Issuer
	Log    *eventlog.Builder
	// Policy matches the node's PCRs 0, 4, 8 and 15.
	Policy measurements.M
	// Manufacturer provisioned the TPM's EK certificate, for nodes made by NewSimulatorNode.
	Manufacturer *Manufacturer
	// SWTPM is the software TPM process, for nodes made by NewSWTPMNode.
	SWTPM   *swtpm.TPM
	conn    io.Closer
	close   func() error
	release sync.Once
}

// Release closes the issuer and the node's TPM connection but leaves a software TPM running, so that
// another client can connect (swtpm serves one at a time).
func (n *Node) Release() {
	n.release.Do(func() {
		n.Issuer.Close()
		if n.conn != nil {
			n.conn.Close()
		}
	})
}

// BootMeasurements are the events NewNode measures: the node image into PCR 4, the boot parameters into PCR 8,
// as the mini firmware does (see package measuredboot).
var BootMeasurements = []struct {
	PCR  uint32
	Type eventlog.EventType
	Data string
}{
	{measurements.PCRNodeImage, eventlog.IPL, "node image sha256:1111111111111111111111111111111111111111111111111111111111111111"},
	{measurements.PCRBootParams, eventlog.IPL, "boot parameters: console=ttyS0 ro"},
	{measurements.PCRNodeImage, eventlog.Separator, "\x00\x00\x00\x00"},
}

// NewSimulatorNode starts the reference TPM simulator and makes it a node: provisioned, measured, enrolled.
func NewSimulatorNode(alg vtpm.KeyAlgorithm) (*Node, error) {
	mf, err := NewManufacturer()
	if err != nil {
		return nil, err
	}
	sim, err := mf.Simulator()
	if err != nil {
		return nil, err
	}
	ca, err := NewAKCA(mf.Cert)
	if err != nil {
		sim.Close()
		return nil, err
	}
	n, err := NewNode(sim, ca, alg)
	if err != nil {
		sim.Close()
		return nil, err
	}
	n.close = sim.Close
	n.Manufacturer = mf
	return n, nil
}

// NewNode measures BootMeasurements into the TPM behind rw, enrolls it with ca as "node-0" and creates its
// issuer.
func NewNode(rw io.ReadWriter, ca *akca.CA, alg vtpm.KeyAlgorithm) (*Node, error) {
	return NewNamedNode(rw, ca, alg, "node-0")
}

// NewNamedNode is [NewNode] for a node named name: its attestation key certificate names it.
func NewNamedNode(rw io.ReadWriter, ca *akca.CA, alg vtpm.KeyAlgorithm, name string) (*Node, error) {
	log := eventlog.NewBuilder()
	for _, m := range BootMeasurements {
		if err := Measure(rw, log, m.PCR, m.Type, []byte(m.Data)); err != nil {
			return nil, err
		}
	}
	akCert, err := akca.Enroll(context.Background(), rw, name, alg, ca)
	if err != nil {
		return nil, fmt.Errorf("enrolling: %w", err)
	}
	issuer, err := vtpm.NewIssuer(rw, alg, akCert, func() ([]byte, error) { return log.Bytes(), nil })
	if err != nil {
		return nil, err
	}
	pcrs, err := client.ReadPCRs(rw, client.FullPcrSel(tpm2.AlgSHA256))
	if err != nil {
		issuer.Close()
		return nil, err
	}
	policy := measurements.M{}
	for _, idx := range []uint32{0, measurements.PCRNodeImage, measurements.PCRBootParams, measurements.PCRClusterID} {
		var d measurements.Digest
		copy(d[:], pcrs.GetPcrs()[idx])
		policy[idx] = measurements.Measurement{Expected: d}
	}
	return &Node{TPM: rw, CA: ca, Issuer: issuer, Log: log, Policy: policy}, nil
}

// Validator returns a validator that accepts this node.
func (n *Node) Validator() (*vtpm.Validator, error) {
	return vtpm.NewValidator([]*x509.Certificate{n.CA.Certificate()}, n.Policy, nil)
}

// Close releases the issuer and stops the TPM if the node started it.
func (n *Node) Close() error {
	n.Release()
	if n.close != nil {
		return n.close()
	}
	return nil
}

// NewSWTPMNode manufactures a swtpm in dir with an EK certificate from a local CA, starts it, and makes it a
// node. The node's Close shuts the TPM down cleanly.
func NewSWTPMNode(ctx context.Context, dir string, alg vtpm.KeyAlgorithm) (*Node, error) {
	return NewNamedSWTPMNode(ctx, dir, alg, nil, "node-0")
}

// NewNamedSWTPMNode is NewSWTPMNode for a node named name, enrolled with ca (nil: a new AK CA for its EK CA).
func NewNamedSWTPMNode(ctx context.Context, dir string, alg vtpm.KeyAlgorithm, ca *akca.CA, name string) (*Node, error) {
	ekCA, err := swtpm.NewCA(filepath.Join(dir, "ek-ca"))
	if err != nil {
		return nil, err
	}
	state := filepath.Join(dir, "tpm")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	if err := swtpm.Manufacture(ctx, state, ekCA); err != nil {
		return nil, err
	}
	tpm, err := swtpm.Start(ctx, state)
	if err != nil {
		return nil, err
	}
	conn, err := tpm.Dial()
	if err != nil {
		tpm.Close()
		return nil, err
	}
	if ca == nil {
		if ca, err = NewAKCA(ekCA.Certificate()); err != nil {
			conn.Close()
			tpm.Close()
			return nil, err
		}
	}
	n, err := NewNamedNode(conn, ca, alg, name)
	if err != nil {
		conn.Close()
		tpm.Close()
		return nil, err
	}
	n.SWTPM = tpm
	n.conn = conn
	n.close = tpm.Close
	return n, nil
}

// AcceptAnyImage returns, derived from a valid policy, the policies that would accept any node image, or the
// genuine image booted with any boot parameters, and that every entry point must refuse: every PCR warn-only,
// and each PCR of measurements.ImagePCRs (the node image, PCR 4, and the boot parameters, PCR 8) missing or
// warn-only.
func AcceptAnyImage(valid measurements.M) map[string]measurements.M {
	allWarn := measurements.M{}
	for idx, m := range valid {
		m.WarnOnly = true
		allWarn[idx] = m
	}
	out := map[string]measurements.M{"all warn-only": allWarn}
	for _, pcr := range []struct {
		idx  uint32
		name string
	}{{measurements.PCRNodeImage, "image PCR"}, {measurements.PCRBootParams, "boot-parameters PCR"}} {
		missing := maps.Clone(valid)
		delete(missing, pcr.idx)
		out[pcr.name+" missing"] = missing
		warnOnly := maps.Clone(valid)
		m := warnOnly[pcr.idx]
		m.WarnOnly = true
		warnOnly[pcr.idx] = m
		out[pcr.name+" warn-only"] = warnOnly
	}
	return out
}
