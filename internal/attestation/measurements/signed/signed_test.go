package signed_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed"
	"github.com/constellation-dev/constellation/internal/attestation/measurements/signed/signtest"
)

const (
	origin  = "log.test.invalid"
	variant = "mini-vtpm"
	image   = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	other   = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

var measurementsJSON = []byte(`{"4":{"expected":"` + strings.Repeat("ab", 32) + `"}}` + "\n")

// Bundles signed while the log ran; the log is stopped before any test verifies.
var fx struct {
	once                        sync.Once
	dir                         string
	err                         error
	root                        signed.Root
	trustedKey, untrustedKey    signed.Key
	good, otherImage, untrusted []byte
	// versioned names the image's Kubernetes and image versions, as `make node-image` signs them now.
	versioned []byte
	// badVersion is a statement, signed by the trusted key, whose Kubernetes version is no version.
	badVersion []byte
	// tilesDir is the log's storage; rewrittenTilesDir that of a second log with the same key and origin
	// and other entries.
	tilesDir, rewrittenTilesDir string
}

// fixtures signs the test bundles on first use, with a log of its own that it stops right after.
func fixtures(t *testing.T) {
	t.Helper()
	fx.once.Do(func() {
		if fx.dir, fx.err = os.MkdirTemp("", "signed-test-"); fx.err == nil {
			fx.err = setup(fx.dir)
		}
	})
	if fx.err != nil {
		t.Fatalf("signing the test bundles: %v", fx.err)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fx.dir != "" {
		os.RemoveAll(fx.dir)
	}
	os.Exit(code)
}

func setup(dir string) error {
	ctx := context.Background()
	bin := filepath.Join(dir, "rekor-server")
	if err := signtest.BuildServer(ctx, bin); err != nil {
		return err
	}
	ports, err := signtest.FreePorts()
	if err != nil {
		return err
	}
	logKey := signtest.NewKey()
	log, err := signtest.Start(ctx, bin, filepath.Join(dir, "log"), origin, logKey, ports)
	if err != nil {
		return err
	}
	// Verification is offline: the log is gone before the first test runs.
	defer log.Stop()
	fx.tilesDir = log.TilesDir
	key, untrusted := signtest.NewKey(), signtest.NewKey()
	fx.trustedKey = signed.Key{Name: "test", PublicKey: &key.PublicKey}
	fx.untrustedKey = signed.Key{Name: "untrusted", PublicKey: &untrusted.PublicKey}
	fx.root = signed.Root{Keys: []signed.Key{fx.trustedKey}, Log: log.Log}
	signPredicate := func(k signed.Signer, p signed.Predicate) ([]byte, error) {
		st, err := signed.Statement("measurements.json", measurementsJSON, p)
		if err != nil {
			return nil, err
		}
		return k.Sign(ctx, st)
	}
	sign := func(k signed.Signer, digest string) ([]byte, error) {
		return signPredicate(k, signed.Predicate{ImageDigest: digest, Variant: variant})
	}
	if fx.good, err = sign(signed.Signer{Key: key, LogURL: log.URL}, image); err != nil {
		return err
	}
	if fx.otherImage, err = sign(signed.Signer{Key: key, LogURL: log.URL}, other); err != nil {
		return err
	}
	if fx.untrusted, err = sign(signed.Signer{Key: untrusted, LogURL: log.URL}, image); err != nil {
		return err
	}
	// After the entries the log consistency tests count on.
	if fx.versioned, err = signPredicate(signed.Signer{Key: key, LogURL: log.URL}, versioned); err != nil {
		return err
	}
	// Statement refuses the version; the signer signs whatever it is given.
	st, err := signed.Statement("measurements.json", measurementsJSON, want)
	if err != nil {
		return err
	}
	st = bytes.Replace(st, []byte(`"variant":"`+variant+`"`), []byte(`"variant":"`+variant+`","kubernetesVersion":"v1.36.4 or v1.37.2"`), 1)
	if fx.badVersion, err = (signed.Signer{Key: key, LogURL: log.URL}).Sign(ctx, st); err != nil {
		return err
	}
	// A second log with the genuine log's key and origin, whose first entry is another one.
	if ports, err = signtest.FreePorts(); err != nil {
		return err
	}
	rewritten, err := signtest.Start(ctx, bin, filepath.Join(dir, "rewritten-log"), origin, logKey, ports)
	if err != nil {
		return err
	}
	defer rewritten.Stop()
	fx.rewrittenTilesDir = rewritten.TilesDir
	for _, digest := range []string{other, image} {
		if _, err := sign(signed.Signer{Key: key, LogURL: rewritten.URL}, digest); err != nil {
			return err
		}
	}
	return nil
}

var (
	want      = signed.Predicate{ImageDigest: image, Variant: variant}
	versioned = signed.Predicate{ImageDigest: image, Variant: variant, KubernetesVersion: "v1.36.4", ImageVersion: "v0.4.0-3-gabcdef0"}
)

func TestVerifyAccepts(t *testing.T) {
	fixtures(t)
	res, err := signed.Verify(fx.root, fx.good, measurementsJSON, want, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Key.Name != "test" || res.Predicate != want || res.LogOrigin != origin || res.CheckpointSize == 0 {
		t.Errorf("result %+v", res)
	}
}

// TestVerifyVersions checks the versions of the signed statement: the result carries them, a caller that names
// versions gets a refusal for any other (or none), and a statement signed before it carried versions stays
// readable, without them.
func TestVerifyVersions(t *testing.T) {
	fixtures(t)
	res, err := signed.Verify(fx.root, fx.versioned, measurementsJSON, want, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Predicate != versioned {
		t.Errorf("signed predicate %+v, want %+v", res.Predicate, versioned)
	}
	if _, err := signed.Verify(fx.root, fx.versioned, measurementsJSON, versioned, false); err != nil {
		t.Errorf("verifying with the signed versions: %v", err)
	}
	older := versioned
	older.KubernetesVersion = "v1.37.2"
	if _, err := signed.Verify(fx.root, fx.versioned, measurementsJSON, older, false); err == nil ||
		!strings.Contains(err.Error(), "Kubernetes v1.36.4, not v1.37.2") {
		t.Errorf("another Kubernetes version: %v", err)
	}
	otherBuild := versioned
	otherBuild.ImageVersion = "v0.5.0"
	if _, err := signed.Verify(fx.root, fx.versioned, measurementsJSON, otherBuild, false); err == nil || !strings.Contains(err.Error(), "v0.4.0-3-gabcdef0, not v0.5.0") {
		t.Errorf("another image version: %v", err)
	}
	// A bundle signed before statements carried versions: readable, with no versions; never one a caller names.
	res, err = signed.Verify(fx.root, fx.good, measurementsJSON, want, false)
	if err != nil || res.Predicate.KubernetesVersion != "" || res.Predicate.ImageVersion != "" {
		t.Errorf("an older bundle: %+v, %v", res, err)
	}
	if _, err := signed.Verify(fx.root, fx.good, measurementsJSON, versioned, false); err == nil || !strings.Contains(err.Error(), "(none signed)") {
		t.Errorf("an older bundle, asked for a Kubernetes version: %v", err)
	}
	// Even a trusted signer's statement must name a well-formed version.
	if _, err := signed.Verify(fx.root, fx.badVersion, measurementsJSON, want, false); err == nil || !strings.Contains(err.Error(), "not a Kubernetes version") {
		t.Errorf("a signed statement with a malformed Kubernetes version: %v", err)
	}
}

func TestStatementRefusesBadVersions(t *testing.T) {
	for _, p := range []signed.Predicate{
		{ImageDigest: image, Variant: variant, KubernetesVersion: "1.36.4"},
		{ImageDigest: image, Variant: variant, KubernetesVersion: "v1.36"},
		{ImageDigest: image, Variant: variant, KubernetesVersion: "v1.36.4\nv1.37.2"},
		{ImageDigest: image, Variant: variant, KubernetesVersion: "v01.36.4"},
		{ImageDigest: image, Variant: variant, ImageVersion: "v0.4.0 (dirty)"},
		{ImageDigest: image, Variant: variant, ImageVersion: strings.Repeat("v", signed.MaxVersionLength+1)},
	} {
		if _, err := signed.Statement("measurements.json", measurementsJSON, p); err == nil {
			t.Errorf("Statement accepted %+v", p)
		}
	}
	for _, v := range []string{"v1.37.2", "v1.37.0-rc.1", "v1.37.2+custom", "v0.0.0"} {
		if err := signed.CheckKubernetesVersion(v); err != nil {
			t.Errorf("CheckKubernetesVersion(%q): %v", v, err)
		}
	}
}

// editBundle decodes the bundle as generic JSON, lets edit change it and encodes it again.
func editBundle(t *testing.T, raw []byte, edit func(b map[string]any)) []byte {
	t.Helper()
	var b map[string]any
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	edit(b)
	out, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tlogEntry(b map[string]any) map[string]any {
	return b["verificationMaterial"].(map[string]any)["tlogEntries"].([]any)[0].(map[string]any)
}

func TestVerifyRefuses(t *testing.T) {
	fixtures(t)
	flipped := bytes.Clone(measurementsJSON)
	flipped[10] ^= 1
	otherLog := fx.root
	otherLog.Log.PublicKey = &signtest.NewKey().PublicKey
	devRoot := fx.root
	devRoot.Keys = []signed.Key{{Name: "development", Development: true, PublicKey: fx.trustedKey.PublicKey}}
	tests := map[string]struct {
		root         signed.Root
		bundle, meas []byte
		want         signed.Predicate
		allowDev     bool
		wantErr      string
	}{
		"a flipped byte of the measurements": {root: fx.root, bundle: fx.good, meas: flipped, want: want, wantErr: "does not verify"},
		"a root with another log key":        {root: otherLog, bundle: fx.good, meas: measurementsJSON, want: want, wantErr: "transparency log"},
		"a bundle without its log entry": {root: fx.root, meas: measurementsJSON, want: want, wantErr: "log entries",
			bundle: editBundle(t, fx.good, func(b map[string]any) {
				delete(b["verificationMaterial"].(map[string]any), "tlogEntries")
			})},
		"an edited checkpoint": {root: fx.root, meas: measurementsJSON, want: want, wantErr: "does not verify",
			bundle: editBundle(t, fx.good, func(b map[string]any) {
				cp := tlogEntry(b)["inclusionProof"].(map[string]any)["checkpoint"].(map[string]any)
				env := cp["envelope"].(string)
				lines := strings.SplitN(env, "\n", 3)
				lines[1] = lines[1] + "0" // another tree size, same signature
				cp["envelope"] = strings.Join(lines, "\n")
			})},
		"an edited inclusion proof": {root: fx.root, meas: measurementsJSON, want: want, wantErr: "does not verify",
			bundle: editBundle(t, fx.good, func(b map[string]any) {
				p := tlogEntry(b)["inclusionProof"].(map[string]any)
				// The proof claims the entry sits elsewhere in the tree.
				p["logIndex"] = "1"
				tlogEntry(b)["logIndex"] = "1"
			})},
		"a signature by an untrusted key": {root: fx.root, bundle: fx.untrusted, meas: measurementsJSON, want: want, wantErr: "not trusted"},
		"an untrusted key posing as a trusted one": {root: fx.root, meas: measurementsJSON, want: want, wantErr: "does not verify",
			bundle: editBundle(t, fx.untrusted, func(b map[string]any) {
				hint, _ := fx.trustedKey.Hint()
				b["verificationMaterial"].(map[string]any)["publicKey"] = map[string]any{"hint": hint}
			})},
		"a bundle for another image":                 {root: fx.root, bundle: fx.otherImage, meas: measurementsJSON, want: want, wantErr: "not for image"},
		"another variant":                            {root: fx.root, bundle: fx.good, meas: measurementsJSON, want: signed.Predicate{ImageDigest: image, Variant: "azure-sev-snp"}, wantErr: "not for image"},
		"a development-signed image without consent": {root: devRoot, bundle: fx.good, meas: measurementsJSON, want: want, wantErr: "--allow-dev-signed"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := signed.Verify(tc.root, tc.bundle, tc.meas, tc.want, tc.allowDev)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Verify = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
	t.Run("a development-signed image with consent", func(t *testing.T) {
		res, err := signed.Verify(devRoot, fx.good, measurementsJSON, want, true)
		if err != nil || !res.Key.Development {
			t.Fatalf("Verify = %+v, %v", res, err)
		}
	})
}

func TestRootRoundTrip(t *testing.T) {
	fixtures(t)
	raw, err := json.Marshal(fx.root)
	if err != nil {
		t.Fatal(err)
	}
	r, err := signed.ParseRoot(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := signed.Verify(r, fx.good, measurementsJSON, want, false); err != nil {
		t.Fatal(err)
	}
}

// FuzzParseBundle feeds the bundle parser and the verifier bytes derived from recorded bundles of local builds
// (one from before statements named the image's versions, one that names them); it needs no log.
func FuzzParseBundle(f *testing.F) {
	for _, name := range []string{"recorded.sigstore.json", "recorded-versions.sigstore.json"} {
		recorded, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(recorded)
	}
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`))
	key := signtest.NewKey()
	root := signed.Root{Keys: []signed.Key{{Name: "fuzz", PublicKey: &key.PublicKey}}, Log: signed.Log{Origin: origin, PublicKey: &signtest.NewKey().PublicKey}}
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := signed.ParseBundle(raw)
		if err != nil {
			return
		}
		if b.GetDsseEnvelope() == nil || len(b.GetVerificationMaterial().GetTlogEntries()) != 1 {
			t.Fatal("ParseBundle accepted a bundle it must refuse")
		}
		// Whatever parses must not crash the verifier either.
		if _, err := signed.Verify(root, raw, measurementsJSON, want, false); err == nil {
			t.Fatal("a bundle verified against a root no bundle was signed for")
		}
	})
}
