package vtpm_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/akca"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

// fixture is one enrolled, measured TPM (the reference simulator) and a CA that certified its AK.
type fixture struct {
	rw     io.ReadWriter
	ca     *akca.CA
	issuer *vtpm.Issuer
	log    *eventlog.Builder
	policy measurements.M
	mf     *tpmtest.Manufacturer
}

func newFixture(t *testing.T, alg vtpm.KeyAlgorithm) *fixture {
	t.Helper()
	node, err := tpmtest.NewSimulatorNode(alg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	return &fixture{rw: node.TPM, ca: node.CA, issuer: node.Issuer, log: node.Log, policy: node.Policy, mf: node.Manufacturer}
}

func (f *fixture) validator(t *testing.T, policy measurements.M) *vtpm.Validator {
	t.Helper()
	v, err := vtpm.NewValidator([]*x509.Certificate{f.ca.Certificate()}, policy, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func nonce(b byte) []byte { return bytes.Repeat([]byte{b}, attestation.NonceSize) }

func TestIssueValidate(t *testing.T) {
	for _, alg := range []vtpm.KeyAlgorithm{vtpm.ECC, vtpm.RSA} {
		t.Run(alg.String(), func(t *testing.T) {
			f := newFixture(t, alg)
			ctx := context.Background()
			ev, err := f.issuer.Issue(ctx, nonce(1), []byte("channel key hash"))
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			got, err := f.validator(t, f.policy).Validate(ctx, ev, nonce(1))
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if string(got) != "channel key hash" {
				t.Fatalf("user data = %q", got)
			}
		})
	}
}

// mutate decodes evidence, applies fn, and re-encodes it.
func mutate(t *testing.T, ev []byte, fn func(*attestation.Document)) []byte {
	t.Helper()
	doc, err := attestation.ParseDocument(ev)
	if err != nil {
		t.Fatal(err)
	}
	fn(doc)
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestValidateRejects(t *testing.T) {
	f := newFixture(t, vtpm.ECC)
	ctx := context.Background()
	ev, err := f.issuer.Issue(ctx, nonce(1), []byte("user"))
	if err != nil {
		t.Fatal(err)
	}
	v := f.validator(t, f.policy)

	// The same TPM, enrolled with another provider's AK CA.
	other := func() []byte {
		otherCA, err := tpmtest.NewAKCA(f.mf.Cert)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := akca.Enroll(ctx, f.rw, "intruder", vtpm.ECC, otherCA)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}()
	rsaCert, err := akca.Enroll(ctx, f.rw, "node-0", vtpm.RSA, f.ca)
	if err != nil {
		t.Fatal(err)
	}

	// A quote over fewer PCRs than the variant requires, with a correct binding and signature.
	partial := func() []byte {
		ak, err := vtpm.CreateAK(f.rw, vtpm.ECC)
		if err != nil {
			t.Fatal(err)
		}
		defer ak.Close()
		binding := attestation.BindingDigest(attestation.MiniVTPM, nonce(1), []byte("user"))
		q, err := ak.Quote(tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7}}, binding[:])
		if err != nil {
			t.Fatal(err)
		}
		return mutate(t, ev, func(d *attestation.Document) {
			d.TPM.Quotes[0] = attestation.Quote{Quote: q.GetQuote(), Signature: q.GetRawSig(), PCRs: q.GetPcrs().GetPcrs()}
		})
	}()

	tests := map[string]struct {
		evidence []byte
		nonce    []byte
		wantErr  string
	}{
		"wrong nonce (replayed evidence)": {ev, nonce(2), "not bound to this nonce"},
		"short nonce":                     {ev, []byte("short"), "invalid nonce"},
		"tampered user data": {mutate(t, ev, func(d *attestation.Document) { d.UserData = []byte("other") }), nonce(1),
			"not bound to this nonce"},
		"tampered PCR value": {mutate(t, ev, func(d *attestation.Document) { d.TPM.Quotes[0].PCRs[4][0] ^= 1 }), nonce(1),
			"do not match the quoted PCR digest"},
		"missing PCR value": {mutate(t, ev, func(d *attestation.Document) { delete(d.TPM.Quotes[0].PCRs, 23) }), nonce(1),
			"carries 23 PCR values"},
		"tampered quote": {mutate(t, ev, func(d *attestation.Document) { d.TPM.Quotes[0].Quote[len(d.TPM.Quotes[0].Quote)-1] ^= 1 }), nonce(1),
			"does not verify"},
		"tampered signature": {mutate(t, ev, func(d *attestation.Document) { s := d.TPM.Quotes[0].Signature; s[len(s)-1] ^= 1 }), nonce(1),
			"does not verify"},
		"truncated signature": {mutate(t, ev, func(d *attestation.Document) {
			s := d.TPM.Quotes[0].Signature
			d.TPM.Quotes[0].Signature = s[:len(s)-3]
		}), nonce(1),
			"truncated"},
		"AK certificate from another CA": {mutate(t, ev, func(d *attestation.Document) { d.TPM.AKCert = other }), nonce(1),
			"not trusted"},
		"AK certificate for another key": {mutate(t, ev, func(d *attestation.Document) { d.TPM.AKCert = rsaCert }), nonce(1),
			"the attestation key is *rsa.PublicKey"},
		"CA certificate as AK certificate": {mutate(t, ev, func(d *attestation.Document) { d.TPM.AKCert = f.ca.Certificate().Raw }), nonce(1),
			"not an attestation key certificate"},
		"no quote":              {mutate(t, ev, func(d *attestation.Document) { d.TPM.Quotes = nil }), nonce(1), "0 quotes"},
		"two quotes":            {mutate(t, ev, func(d *attestation.Document) { d.TPM.Quotes = append(d.TPM.Quotes, d.TPM.Quotes[0]) }), nonce(1), "2 quotes"},
		"no TPM part":           {mutate(t, ev, func(d *attestation.Document) { d.TPM = nil }), nonce(1), "no TPM part"},
		"partial PCR selection": {partial, nonce(1), "want SHA-256 PCRs 0-23"},
		"altered event log": {mutate(t, ev, func(d *attestation.Document) {
			b := eventlog.NewBuilder()
			b.Append(4, eventlog.IPL, []byte("node image sha256:2222"))
			d.TPM.EventLog = b.Bytes()
		}), nonce(1), "event log does not match quoted PCR 4"},
		"garbage event log":  {mutate(t, ev, func(d *attestation.Document) { d.TPM.EventLog = []byte("garbage") }), nonce(1), "parsing event log"},
		"truncated document": {ev[:len(ev)/2], nonce(1), "malformed evidence document"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := v.Validate(ctx, tc.evidence, tc.nonce)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestValidateExpiredAKCert(t *testing.T) {
	f := newFixture(t, vtpm.ECC)
	ev, err := f.issuer.Issue(context.Background(), nonce(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	// A validator that never saw the certificate, and one that verified it while it was valid (cached).
	fresh := f.validator(t, f.policy)
	cached := f.validator(t, f.policy)
	if _, err := cached.Validate(context.Background(), ev, nonce(1)); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]*vtpm.Validator{"fresh": fresh, "cached": cached} {
		for _, at := range []time.Time{time.Now().Add(2 * akca.DefaultValidity), time.Now().Add(-time.Hour)} {
			vtpm.SetClock(v, func() time.Time { return at })
			if _, err := v.Validate(context.Background(), ev, nonce(1)); err == nil || !strings.Contains(err.Error(), "expired or is not yet valid") {
				t.Fatalf("%s validator at %s: Validate = %v, want an expiry error", name, at, err)
			}
		}
	}
}

func TestIssuerFollowsPCRChanges(t *testing.T) {
	f := newFixture(t, vtpm.ECC)
	ctx := context.Background()
	v := f.validator(t, f.policy)
	if _, err := f.issuer.Issue(ctx, nonce(1), nil); err != nil {
		t.Fatal(err)
	}
	// Extend a PCR after the issuer cached the PCR values: the next evidence must show the new value.
	if err := tpmtest.Measure(f.rw, f.log, measurements.PCRBootParams, eventlog.IPL, []byte("a late measurement")); err != nil {
		t.Fatal(err)
	}
	ev, err := f.issuer.Issue(ctx, nonce(2), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Validate(ctx, ev, nonce(2))
	var merr *measurements.Error
	if !errors.As(err, &merr) || len(merr.Mismatches) != 1 || merr.Mismatches[0].PCR != measurements.PCRBootParams {
		t.Fatalf("Validate after a PCR 8 extension = %v, want a PCR 8 mismatch", err)
	}
	if !strings.Contains(err.Error(), "a late measurement") {
		t.Fatalf("mismatch does not show the new event: %v", err)
	}
}

func TestMeasurementMismatchListsEveryPCR(t *testing.T) {
	f := newFixture(t, vtpm.ECC)
	ev, err := f.issuer.Issue(context.Background(), nonce(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	policy := measurements.M{}
	for k, m := range f.policy {
		policy[k] = m
	}
	wrong := measurements.Digest{0xcd}
	policy[4] = measurements.Measurement{Expected: wrong}
	policy[8] = measurements.Measurement{Expected: wrong}
	policy[12] = measurements.Measurement{Expected: wrong, WarnOnly: true}

	_, err = f.validator(t, policy).Validate(context.Background(), ev, nonce(1))
	var merr *measurements.Error
	if !errors.As(err, &merr) {
		t.Fatalf("Validate = %v, want *measurements.Error", err)
	}
	if len(merr.Mismatches) != 3 || len(measurements.Fatal(merr.Mismatches)) != 2 {
		t.Fatalf("mismatches = %+v, want PCRs 4, 8 and warn-only 12", merr.Mismatches)
	}
	msg := err.Error()
	for _, want := range []string{
		"PCRs 4, 8",
		"PCR 4: ",
		"expected " + wrong.String(),
		"EV_IPL: node image sha256:1111",
		"EV_IPL: boot parameters: console=ttyS0 ro",
		"PCR 12: 0000000000000000000000000000000000000000000000000000000000000000, expected cd00",
		"(warn only)",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error message lacks %q:\n%s", want, msg)
		}
	}

	// Only warn-only mismatches: accepted.
	policy = measurements.M{12: {Expected: wrong, WarnOnly: true}, 4: f.policy[4], 8: f.policy[8]}
	if _, err := f.validator(t, policy).Validate(context.Background(), ev, nonce(1)); err != nil {
		t.Fatalf("warn-only mismatch rejected: %v", err)
	}
}

func TestNewValidatorDeniesByDefault(t *testing.T) {
	if _, err := vtpm.NewValidator(nil, measurements.M{4: {}, 8: {}}, nil); err == nil {
		t.Fatal("validator without AK roots accepted")
	}
	_, cert, err := tpmtest.NewCACert("ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vtpm.NewValidator([]*x509.Certificate{cert}, nil, nil); !errors.Is(err, measurements.ErrEmptyPolicy) {
		t.Fatalf("validator with empty policy: %v", err)
	}
}

func TestIssuerRejectsForeignAKCert(t *testing.T) {
	f := newFixture(t, vtpm.ECC)
	if _, err := vtpm.NewIssuer(f.rw, vtpm.ECC, f.ca.Certificate().Raw, nil); err == nil {
		t.Fatal("issuer accepted a certificate for another key")
	}
}

func TestMeasureAfterBoot(t *testing.T) {
	f := newFixture(t, vtpm.ECC)
	ctx := context.Background()
	if err := f.issuer.Measure(15, eventlog.EventTag, []byte("constellation cluster id abcd")); err != nil {
		t.Fatal(err)
	}
	ev, err := f.issuer.Issue(ctx, nonce(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The original policy expects PCR 15 to be zero: a node that joined a cluster is not a fresh node.
	_, err = f.validator(t, f.policy).Validate(ctx, ev, nonce(1))
	if err == nil || !strings.Contains(err.Error(), "PCR 15") || !strings.Contains(err.Error(), "constellation cluster id abcd") {
		t.Fatalf("Validate after a cluster ID measurement = %v, want a PCR 15 mismatch that shows the event", err)
	}
	// The policy of that cluster accepts it; the event log (boot + runtime) replays to the quoted values.
	b := eventlog.NewBuilder()
	b.Append(15, eventlog.EventTag, []byte("constellation cluster id abcd"))
	policy := measurements.M{}
	for k, v := range f.policy {
		policy[k] = v
	}
	policy[15] = measurements.Measurement{Expected: measurements.Digest(eventlog.Replay(b.Events())[15])}
	if _, err := f.validator(t, policy).Validate(ctx, ev, nonce(1)); err != nil {
		t.Fatalf("Validate with the cluster's PCR 15: %v", err)
	}
}
