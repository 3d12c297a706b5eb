package houserules

import (
	"bufio"
	"bytes"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/constellation-dev/constellation/"

// A layer is a rank: a package may import packages of its own rank or below, never above. Ranks are assigned by
// path prefix; the longest prefix wins.
const (
	plumbing  = iota + 1 // small helpers with no notion of the product: files, retries, the version, API clients, wire formats
	trustCore            // what decides whom to trust: attestation, measurements, the measured-boot scheme, aTLS, keys
	nodePiece            // what a node is built from: disks, the mesh, kubeadm, the node image, the providers' node-facing parts
	service              // the CLI and the services: bootstrapper, join, key and verification services, the providers
	binary               // mains, tools and tests
)

var layerNames = map[int]string{plumbing: "plumbing", trustCore: "trust core", nodePiece: "node piece", service: "CLI/service", binary: "binary"}

// layers maps path prefixes (relative to the module) to their rank. Every package must match one.
var layers = map[string]int{
	"cmd/":   binary,
	"tools/": binary,
	"test/":  binary,

	"internal/cli":            service,
	"internal/bootstrapper":   service,
	"internal/joinservice":    service,
	"internal/keyservice":     service,
	"internal/verifyservice":  service,
	"internal/reattestation":  service,
	"internal/upgrade":        service,
	"internal/upgrade/deploy": service, // the upgrade controller's manifests, which the bootstrapper applies; not the controller
	"internal/provider/":      service,

	"internal/bootstrapper/kubeadm":   nodePiece,
	"internal/diskmapper":             nodePiece,
	"internal/wgmesh":                 nodePiece,
	"internal/meshpeers":              nodePiece,
	"internal/meshagent":              nodePiece,
	"internal/apiproxy":               nodePiece,
	"internal/nodeimage":              nodePiece,
	"internal/bootimage":              nodePiece,
	"internal/nodeinit":               nodePiece,
	"internal/config":                 nodePiece,
	"internal/provider/mini/metadata": nodePiece,
	"internal/provider/qemu/guest":    nodePiece,
	"internal/provider":               nodePiece, // the seam: what a node asks of its provider
	"internal/provider/providers":     nodePiece, // opens a node's provider by name
	"internal/tpmtest":                nodePiece,
	"internal/swtpm":                  nodePiece,

	"internal/attestation":            trustCore,
	"internal/attestation/snp/launch": trustCore, // the SEV-SNP launch measurement a verifier expects
	"internal/atls":                   trustCore,
	"internal/measuredboot":           trustCore,
	"internal/kms":                    trustCore,

	"internal/atomicfile":               plumbing,
	"internal/cadir":                    plumbing,
	"internal/registrymirror":           plumbing,
	"internal/nodedns":                  plumbing, // the nodes' DNS servers, their validation, resolv.conf and CoreDNS upstream: a configuration format
	"internal/imagearchive":             plumbing, // which names a docker or OCI archive gives its images // a mirror list, its validation and its hosts.toml: a configuration format
	"internal/retry":                    plumbing,
	"internal/version":                  plumbing,
	"internal/kubeapi":                  plumbing,
	"internal/strictjson":               plumbing,
	"internal/bootstrapper/initpb":      plumbing,
	"internal/joinservice/joinpb":       plumbing,
	"internal/keyservice/keyservicepb":  plumbing,
	"internal/verifyservice/verifypb":   plumbing,
	"internal/diskmapper/luks/testhook": plumbing,
	"internal/upgrade/api":              plumbing, // the NodeUpgrade API types: a wire contract
}

// exceptions are imports that break a rule today, each with the reason it is still here. The list only
// shrinks: an exception that no longer occurs fails the test, so that it is removed from here too.
var exceptions = map[string]string{
	"test/e2e/roguenode -> internal/provider/mini/metadata": "a test node of the mini provider",
}

func rank(pkg string) (int, bool) {
	if r, ok := layers[pkg]; ok {
		return r, true
	}
	best, r := "", 0
	for prefix, l := range layers {
		if (pkg == strings.TrimSuffix(prefix, "/") || strings.HasPrefix(pkg, prefix)) && len(prefix) > len(best) {
			best, r = prefix, l
		}
	}
	return r, best != ""
}

// imports returns each package of the module (relative path) with the module's packages it imports.
func imports(t *testing.T) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, module+"...")
	cmd.Dir = "../.."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	graph := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		pkg := strings.TrimPrefix(fields[0], module)
		graph[pkg] = nil
		for _, imp := range fields[1:] {
			if strings.HasPrefix(imp, module) {
				graph[pkg] = append(graph[pkg], strings.TrimPrefix(imp, module))
			}
		}
	}
	if len(graph) < 20 {
		t.Fatalf("go list found only %d packages:\n%s", len(graph), out)
	}
	return graph
}

// isTestHelper reports whether pkg is a package of test helpers (fakes, fixtures, simulators).
func isTestHelper(pkg string) bool {
	last := pkg[strings.LastIndex(pkg, "/")+1:]
	return strings.HasSuffix(last, "test") && last != "test"
}

// TestLayers checks that no package imports a package of a higher layer, and the named rules below.
func TestLayers(t *testing.T) {
	graph := imports(t)
	seen := map[string]bool{}
	var problems []string
	check := func(from, to, why string) {
		edge := from + " -> " + to
		if _, ok := exceptions[edge]; ok {
			seen[edge] = true
			return
		}
		problems = append(problems, edge+": "+why)
	}
	for from, tos := range graph {
		rf, ok := rank(from)
		if !ok {
			problems = append(problems, from+": in no layer; add its prefix to layers in this file")
			continue
		}
		for _, to := range tos {
			rt, ok := rank(to)
			if !ok {
				continue // reported as its own package
			}
			if rt > rf {
				check(from, to, "a "+layerNames[rf]+" imports a "+layerNames[rt])
			}
			// The attestation code decides whom to trust; it knows nothing of configuration files, services,
			// the CLI or providers.
			if strings.HasPrefix(from, "internal/attestation") && !strings.HasPrefix(to, "internal/attestation") &&
				rank2(to) >= nodePiece {
				check(from, to, "the attestation code imports a configuration, service, CLI or provider package")
			}
			// No service imports the bootstrapper; the CLI calls its Init API through the wire contract alone.
			if isService(from) && (to == "internal/bootstrapper" || strings.HasPrefix(to, "internal/bootstrapper/")) &&
				!(from == "internal/cli" && to == "internal/bootstrapper/initpb") {
				check(from, to, "a service imports the bootstrapper's folder")
			}
			// The node side reaches its provider only through the provider seam.
			if isNodeSide(from) && strings.HasPrefix(to, "internal/provider/") && to != "internal/provider/providers" {
				check(from, to, "the node side imports a provider directly")
			}
			// A test hook is set by tests alone; of what ships, only the package it hooks into reads it.
			if to == "internal/diskmapper/luks/testhook" && from != "internal/diskmapper/luks" && rf != binary {
				check(from, to, "a production package imports the luks package's test hook")
			}
			// Test helpers stay out of what ships.
			if isTestHelper(to) && !isTestHelper(from) && rf != binary {
				check(from, to, "a production package imports a test helper package")
			}
		}
	}
	for edge, why := range exceptions {
		if !seen[edge] {
			problems = append(problems, "exception no longer needed, remove it from the list: "+edge+" ("+why+")")
		}
	}
	sort.Strings(problems)
	for _, p := range problems {
		t.Error(p)
	}
}

func rank2(pkg string) int { r, _ := rank(pkg); return r }

func isService(pkg string) bool {
	for _, s := range []string{"internal/joinservice", "internal/keyservice", "internal/verifyservice", "internal/cli"} {
		if pkg == s || strings.HasPrefix(pkg, s+"/") {
			return true
		}
	}
	return false
}

// isNodeSide reports whether pkg runs on a node (the bootstrapper, the services in the cluster, their mains).
func isNodeSide(pkg string) bool {
	for _, s := range []string{"internal/bootstrapper", "internal/joinservice", "internal/keyservice", "internal/verifyservice",
		"internal/diskmapper", "internal/wgmesh", "internal/meshpeers", "internal/meshagent", "cmd/bootstrapper", "cmd/join-service", "cmd/key-service", "cmd/verification-service"} {
		if pkg == s || strings.HasPrefix(pkg, s+"/") {
			return true
		}
	}
	return strings.HasPrefix(pkg, "test/e2e/")
}

// The node agent is small and links no controller framework: the bootstrapper deploys the upgrade controller from
// its manifests (internal/upgrade/deploy) and never links the controller (internal/upgrade, controller-runtime).
func TestBootstrapperLinksNoController(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "./cmd/bootstrapper")
	cmd.Dir = "../.."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == module+"internal/upgrade" || strings.HasPrefix(pkg, "sigs.k8s.io/controller-runtime") {
			t.Errorf("cmd/bootstrapper links %s", pkg)
		}
	}
}
