package nodeimage

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation/measurements"
)

func TestWriteTarReproducible(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "bin")
	if err := os.WriteFile(src, []byte("binary"), 0o700); err != nil {
		t.Fatal(err)
	}
	files := []File{
		{Path: "/usr/bin/tool", Source: src},
		{Path: "/etc/config", Data: []byte("x=1\n")},
		{Path: "/usr/bin/alias", Link: "tool"},
	}
	var a, b bytes.Buffer
	if err := WriteTar(&a, files); err != nil {
		t.Fatal(err)
	}
	// Another order and another modification time of the source: the same bytes.
	if err := os.Chtimes(src, time.Now(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	slices.Reverse(files)
	if err := WriteTar(&b, files); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("the same files give different tar streams")
	}
	if err := WriteTar(&b, append(files, File{Path: "/etc/config", Data: []byte("x=2\n")})); err == nil {
		t.Fatal("two different entries for one path accepted")
	}
	if err := WriteTar(&b, []File{{Path: "relative"}}); err == nil {
		t.Fatal("relative path accepted")
	}
}

func TestLibraryClosure(t *testing.T) {
	if !fileExists("/usr/sbin/xtables-nft-multi") {
		t.Skip("iptables not installed")
	}
	libs, err := LibraryClosure("/usr/sbin/xtables-nft-multi")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range libs {
		names = append(names, filepath.Base(l))
	}
	for _, want := range []string{"libc.so.6", "ld-linux-x86-64.so.2", "libxtables.so.12", "libnftnl.so.11"} {
		if !slices.Contains(names, want) {
			t.Errorf("closure of xtables-nft-multi lacks %s: %v", want, names)
		}
	}
	if _, err := LibraryClosure("/etc/hostname"); err == nil {
		t.Error("a non-ELF file accepted")
	}
}

// fakeInputs lays out the build inputs with busybox (a static binary) standing in for every binary.
func fakeInputs(t *testing.T) Inputs {
	t.Helper()
	if !fileExists("/usr/bin/busybox") || !fileExists("/usr/sbin/xtables-nft-multi") {
		t.Skip("busybox-static and iptables are needed (scripts/setup.sh)")
	}
	dir := t.TempDir()
	in := Inputs{
		Versions:      Versions{Kubernetes: "v1.37.2", Etcd: "3.7.0-0", CoreDNS: "v1.14.6", Pause: "3.10.2"},
		KubernetesBin: filepath.Join(dir, "k8s"),
		ComponentsBin: filepath.Join(dir, "components"),
		CNIDir:        filepath.Join(dir, "cni"),
	}
	place := func(dir string, names ...string) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if err := copyFile("/usr/bin/busybox", filepath.Join(dir, n), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	place(in.KubernetesBin, "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet", "kubeadm", "kubectl")
	place(in.ComponentsBin, "etcd", "coredns", "pause", "containerd", "containerd-shim-runc-v2", "ctr", "runc")
	place(in.CNIDir, "bridge", "host-local", "loopback", "portmap")
	return in
}

func TestBuildReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two node images")
	}
	in := fakeInputs(t)
	ctx := context.Background()
	m1, err := Build(ctx, in, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	out2 := t.TempDir()
	m2, err := Build(ctx, in, out2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m1.Digest != m2.Digest {
		t.Fatalf("two builds from the same inputs differ: %s and %s", m1.Digest, m2.Digest)
	}
	for ref, d := range m1.Images {
		if m2.Images[ref] != d {
			t.Fatalf("image %s differs between builds", ref)
		}
	}
	if len(m1.Images) != 7 || !strings.HasPrefix(m1.Images["registry.k8s.io/pause:3.10.2"], "sha256:") {
		t.Fatalf("unexpected images %v", m1.Images)
	}
	raw, err := os.ReadFile(filepath.Join(out2, "measurements.json"))
	if err != nil {
		t.Fatal(err)
	}
	policy, err := measurements.Parse(raw)
	if err != nil || len(policy) != 3 {
		t.Fatalf("measurements file: %v, %d entries", err, len(policy))
	}

	// One byte more in one input: another image, another PCR 4.
	if err := os.WriteFile(filepath.Join(in.CNIDir, "bridge"), []byte("changed"), 0o755); err != nil {
		t.Fatal(err)
	}
	out3 := t.TempDir()
	m3, err := Build(ctx, in, out3, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m3.Digest == m1.Digest {
		t.Fatal("a changed input gives the same image digest")
	}
	raw3, _ := os.ReadFile(filepath.Join(out3, "measurements.json"))
	policy3, _ := measurements.Parse(raw3)
	if policy3[4] == policy[4] || policy3[8] != policy[8] {
		t.Fatal("a changed image must change PCR 4 and only PCR 4")
	}
	var manifest Manifest
	rawManifest, _ := os.ReadFile(filepath.Join(out3, "node-image.json"))
	if err := json.Unmarshal(rawManifest, &manifest); err != nil || manifest.Digest != m3.Digest || manifest.Cmdline != DefaultCmdline {
		t.Fatalf("manifest: %v %+v", err, manifest)
	}
}

func TestBuildReportsMissingInputs(t *testing.T) {
	in := fakeInputs(t)
	in.CNIDir = filepath.Join(t.TempDir(), "none")
	if _, err := Build(context.Background(), in, t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "no CNI plugins") {
		t.Fatalf("Build without CNI plugins = %v", err)
	}
	in = fakeInputs(t)
	os.Remove(filepath.Join(in.ComponentsBin, "etcd"))
	if _, err := Build(context.Background(), in, t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "etcd") {
		t.Fatalf("Build without etcd = %v", err)
	}
}
