package nodeimage

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// genuineManifest is node-image.json as a build writes it.
const genuineManifest = `{"digest":"sha256:8f0e1c0f4be1ad4bf4bd8e0a0ed2c9a8bd5cd6c2d7d8cf9a8e6f6a5b4c3d2e1f","size":298844160,` +
	`"cmdline":"/usr/bin/bootstrapper --provider=mini","versions":{"kubernetes":"v1.37.2","etcd":"3.6.5-0","coredns":"v1.12.4","pause":"3.10.1"},` +
	`"images":{"constellation.local/join-service:v0.4.0":"sha256:0a"},"version":"v0.4.0"}`

func TestParseManifest(t *testing.T) {
	m, err := ParseManifest([]byte(genuineManifest))
	if err != nil {
		t.Fatal(err)
	}
	if m.Versions.Kubernetes != "v1.37.2" || m.Version != "v0.4.0" {
		t.Errorf("manifest %+v", m)
	}
	// A manifest of an older build names no image version.
	if _, err := ParseManifest([]byte(strings.Replace(genuineManifest, `,"version":"v0.4.0"`, "", 1))); err != nil {
		t.Errorf("a manifest without the image version: %v", err)
	}
	for name, raw := range map[string]string{
		// Two readers would disagree on which version the image runs.
		"the Kubernetes version twice": strings.Replace(genuineManifest, `"kubernetes":"v1.37.2"`, `"kubernetes":"v1.37.2","kubernetes":"v1.36.4"`, 1),
		"the version in other case":    strings.Replace(genuineManifest, `"kubernetes":"v1.37.2"`, `"kubernetes":"v1.37.2","Kubernetes":"v1.36.4"`, 1),
		"an unknown field":             strings.Replace(genuineManifest, `"size"`, `"signedKubernetes":"v1.36.4","size"`, 1),
		"no Kubernetes version":        strings.Replace(genuineManifest, `"kubernetes":"v1.37.2",`, "", 1),
		"a second value":               genuineManifest + `{}`,
	} {
		if _, err := ParseManifest([]byte(raw)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestCheckSignedVersions(t *testing.T) {
	m, err := ParseManifest([]byte(genuineManifest))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckSignedVersions(m, "v1.37.2", "v0.4.0"); err != nil {
		t.Errorf("the signed versions: %v", err)
	}
	// Statements signed before they carried versions: nothing to check against.
	if err := CheckSignedVersions(m, "", ""); err != nil {
		t.Errorf("no signed versions: %v", err)
	}
	err = CheckSignedVersions(m, "v1.36.4", "v0.4.0")
	if err == nil || !strings.Contains(err.Error(), "claims Kubernetes v1.37.2, but its signed measurements say Kubernetes v1.36.4") {
		t.Errorf("another Kubernetes version: %v", err)
	}
	err = CheckSignedVersions(m, "v1.37.2", "v0.3.9")
	if err == nil || !strings.Contains(err.Error(), "claims version v0.4.0, but its signed measurements say version v0.3.9") {
		t.Errorf("another image version: %v", err)
	}
}

// FuzzParseManifest feeds the manifest parser bytes derived from a genuine manifest: whatever it accepts has a
// Kubernetes version, and encoding/json reads the same manifest from the bytes (no reader sees other versions).
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(genuineManifest))
	f.Add([]byte(strings.Replace(genuineManifest, `"kubernetes":"v1.37.2"`, `"kubernetes":"v1.37.2","kubernetes":"v1.36.4"`, 1)))
	f.Add([]byte(strings.Replace(genuineManifest, `"kubernetes":"v1.37.2"`, `"kubernetes":"v1.37.2","Kubernetes":"v1.36.4"`, 1)))
	f.Add([]byte(`{"digest":"sha256:00","versions":{"kubernetes":"v1.36.4"}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := ParseManifest(raw)
		if err != nil {
			return
		}
		if m.Versions.Kubernetes == "" {
			t.Fatal("a manifest without a Kubernetes version was accepted")
		}
		var lenient Manifest
		if err := json.Unmarshal(raw, &lenient); err != nil || !reflect.DeepEqual(lenient, m) {
			t.Fatalf("encoding/json reads %+v (%v), the strict parser %+v", lenient, err, m)
		}
	})
}
