package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/constellation-dev/constellation/internal/nodeimage"
	"github.com/constellation-dev/constellation/internal/provider/mini"
)

// pushToMirror pushes ci to the provider's registry mirror on this machine's loopback port, as
// `docker push localhost:5001/<repo>` does, and returns the image.
func pushToMirror(t *testing.T, ref string, ci nodeimage.ContainerImage) v1.Image {
	t.Helper()
	img, err := ci.Image()
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("pushing %s to the registry mirror: %v", ref, err)
	}
	return img
}

// TestMiniRegistryMirror: a user's own image, which the node image does not hold, reaches the nodes through the
// provider's registry mirror: pushed on this machine to localhost:5001, pulled by the nodes' containerd with
// imagePullPolicy Always (as localhost:5001/<name>, and as docker.io/<name> for an image pushed as
// localhost:5001/docker.io/<name>), for containers and for an image volume. containerd never turns to the
// registry itself. A layer the host alters in the mirror's storage is refused at the pull: containerd checks
// every blob against its digest, and the pod's event names the mismatch.
func TestMiniRegistryMirror(t *testing.T) {
	cl := startCluster(t, 1, 2)
	k, eventually := cl.k, cl.eventually
	eventually("both workers Ready", func() (string, bool) {
		out, err := k("get", "nodes", "--no-headers")
		return out, err == nil && strings.Count(out, " Ready ") == 3
	})
	text := "hello from the registry mirror " + strconv.FormatInt(time.Now().UnixNano(), 36)
	app := workloadImage(t, "localhost:5001/mirror-app:v1", text)
	pushToMirror(t, "localhost:5001/mirror-app:v1", app)
	pushToMirror(t, "localhost:5001/docker.io/library/mirror-app:v1", app)
	data := dataImage("localhost:5001/mirror-data:v1", nodeimage.File{Path: "/greeting.txt", Data: []byte("data from an image volume")})
	pushToMirror(t, "localhost:5001/mirror-data:v1", data)

	// status names the mirrors of the configuration.
	if out, _ := cl.c.run("status"); !strings.Contains(out, "registry mirror: localhost:5001 -> http://10.217.0.1:5000 (pushed from the host as localhost:5001/<repository>)") ||
		!strings.Contains(out, "registry mirror: docker.io -> http://10.217.0.1:5000 (pushed from the host as localhost:5001/docker.io/<repository>)") {
		t.Errorf("status does not show the registry mirrors:\n%s", out)
	}

	manifest := filepath.Join(t.TempDir(), "mirror.yaml")
	if err := os.WriteFile(manifest, []byte(mirrorManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := k("apply", "-f", manifest); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	// Two replicas, one on each worker, each pulled there from the mirror.
	eventually("the mirrored Deployment ready on both workers", func() (string, bool) {
		out, err := k("get", "pods", "-l", "app=mirror-app", "-o", `jsonpath={range .items[*]}{.spec.nodeName} {.status.phase} {.status.containerStatuses[0].ready}{"\n"}{end}`)
		return out, err == nil && strings.Contains(out, "worker-0 Running true") && strings.Contains(out, "worker-1 Running true")
	})
	eventually("both replicas logging the image's text", func() (string, bool) {
		out, err := k("logs", "-l", "app=mirror-app", "--prefix")
		return out, err == nil && strings.Count(out, text) == 2
	})
	// A container from docker.io/library/mirror-app (the mirror's docker.io namespace) with an image volume from
	// localhost:5001/mirror-data.
	eventually("the pod with the image volume printing the volume's file", func() (string, bool) {
		out, err := k("logs", "mirror-volume")
		return out, err == nil && strings.Contains(out, "/data/greeting.txt: data from an image volume")
	})
	if out, err := k("get", "pod", "mirror-volume", "-o", "jsonpath={.status.containerStatuses[0].imageID}"); err != nil || !strings.Contains(out, "docker.io/library/mirror-app@sha256:") {
		t.Errorf("the image volume pod's container image: %v %s", err, out)
	}

	// An image the mirror does not have: the pull fails at the mirror, and containerd does not turn to Docker Hub.
	if out, err := k("run", "mirror-absent", "--image=docker.io/library/absent:1", "--image-pull-policy=Always", "--restart=Never"); err != nil {
		t.Fatalf("kubectl run: %v\n%s", err, out)
	}
	// Had containerd tried Docker Hub after the mirror, its error would be that host's (no route, no resolver).
	eventually("the pull of an image the mirror lacks failing as not found", func() (string, bool) {
		out, err := k("get", "events", "--field-selector", "involvedObject.name=mirror-absent,reason=Failed", "-o", "jsonpath={.items[*].message}")
		return out, err == nil && strings.Contains(out, "docker.io/library/absent:1: not found")
	})
	if out, _ := k("get", "events", "--field-selector", "involvedObject.name=mirror-absent", "-o", "jsonpath={.items[*].message}"); strings.Contains(out, "registry-1.docker.io") || strings.Contains(out, "lookup") || strings.Contains(out, "dial tcp") {
		t.Errorf("containerd went beyond the mirror:\n%s", out)
	}
	if log, _ := os.ReadFile(filepath.Join(cl.c.ws, "constellation-mini", "provider.log")); !strings.Contains(string(log), "/v2/docker.io/library/absent/manifests/1") {
		t.Errorf("the mirror was not asked for docker.io/library/absent:1")
	}
	// The event names the mirror's answer (not found) even if containerd tried Docker Hub after it; containerd's own
	// log on the node names every host it asked.
	containerdLog := nodeContainerdLog(t, cl, "mirror-absent")
	if !strings.Contains(containerdLog, `url="http://10.217.0.1:5000/v2/library/absent/manifests/1?ns=docker.io"`) || strings.Contains(containerdLog, "registry-1.docker.io") {
		var lines []string
		for _, l := range strings.Split(containerdLog, "\n") {
			if strings.Contains(l, "absent") {
				lines = append(lines, l)
			}
		}
		t.Errorf("containerd did not ask the mirror alone for docker.io/library/absent:1:\n%s", strings.Join(lines, "\n"))
	}

	// The host alters one layer of an image in the mirror's storage before any node pulled it (the image has a
	// layer of its own). A pod that runs it by digest does not start: containerd refuses the layer.
	tampered := workloadImage(t, "localhost:5001/mirror-tampered:v1", "this must never run",
		nodeimage.File{Path: "/unique", Data: []byte("a layer no node has: " + text)})
	img := pushToMirror(t, "localhost:5001/mirror-tampered:v1", tampered)
	digest, _ := img.Digest()
	layers, _ := img.Layers()
	layerDigest, _ := layers[0].Digest()
	blob := filepath.Join(cl.c.ws, "constellation-mini", "registry", "blobs", "sha256", layerDigest.Hex)
	raw, err := os.ReadFile(blob)
	if err != nil {
		t.Fatalf("the layer in the mirror's storage: %v", err)
	}
	raw[len(raw)/2] ^= 0x01
	if err := os.WriteFile(blob, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	ref := "localhost:5001/mirror-tampered@" + digest.String()
	if out, err := k("run", "mirror-tampered", "--image="+ref, "--image-pull-policy=Always", "--restart=Never"); err != nil {
		t.Fatalf("kubectl run: %v\n%s", err, out)
	}
	var event string
	eventually("the pull of the altered layer refused", func() (string, bool) {
		out, err := k("get", "events", "--field-selector", "involvedObject.name=mirror-tampered,reason=Failed", "-o", "jsonpath={.items[*].message}")
		event = out
		return out, err == nil && strings.Contains(out, "digest") && strings.Contains(out, layerDigest.String())
	})
	t.Logf("the node refused the altered layer: %s", event)
	if out, _ := k("get", "pod", "mirror-tampered", "-o", "jsonpath={.status.phase} {.status.containerStatuses[0].state}"); !strings.HasPrefix(out, "Pending") || strings.Contains(out, "running") {
		t.Fatalf("the pod of the altered image: %s", out)
	}
	if out, _ := k("logs", "mirror-tampered"); strings.Contains(out, "this must never run") {
		t.Fatalf("the altered image ran:\n%s", out)
	}
}

// nodeContainerdLog returns containerd's log on the node that runs pod, read in the node's mount namespace.
func nodeContainerdLog(t *testing.T, cl *cluster, pod string) string {
	t.Helper()
	nodeName, err := cl.k("get", "pod", pod, "-o", "jsonpath={.spec.nodeName}")
	if err != nil || nodeName == "" {
		t.Fatalf("the node of %s: %v %s", pod, err, nodeName)
	}
	state, _, err := mini.ReadState(filepath.Join(cl.c.ws, "constellation-mini"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(node(t, state, nodeName).PID), "-m", "cat", "/var/log/containerd.log").CombinedOutput()
	if err != nil {
		t.Fatalf("reading containerd's log on %s: %v\n%s", nodeName, err, out)
	}
	return string(out)
}

// mirrorManifest: the user's image from the mirror, with imagePullPolicy Always, 2 replicas on different workers;
// and a pod with an image volume from the mirror.
var mirrorManifest = fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: mirror-app}
spec:
  replicas: 2
  selector: {matchLabels: {app: mirror-app}}
  template:
    metadata: {labels: {app: mirror-app}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: mirror-app}}}
      containers:
      - name: app
        image: localhost:5001/mirror-app:v1
        imagePullPolicy: Always
---
apiVersion: v1
kind: Pod
metadata: {name: mirror-volume}
spec:
  containers:
  - name: app
    image: docker.io/library/mirror-app:v1
    imagePullPolicy: Always
    command: ["/workload", "-say", "%s", "-cat", "/data/greeting.txt"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    image: {reference: "localhost:5001/mirror-data:v1", pullPolicy: Always}
`, "image volume")
