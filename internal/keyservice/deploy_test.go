package keyservice

import (
	"encoding/json"
	"strings"
	"testing"
)

// The key service runs on the node that holds the master secret, with API credentials that may only read
// Node objects (for their quarantine mark), and reaches only that node's bootstrapper.
func TestManifests(t *testing.T) {
	raw, err := Manifests("control-plane-0", "mini", "http://10.217.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Items []struct {
			Kind string
			Spec struct {
				Template struct {
					Spec struct {
						HostNetwork                  bool
						AutomountServiceAccountToken *bool
						ServiceAccountName           string
						NodeSelector                 map[string]string
						Containers                   []struct {
							Image, ImagePullPolicy string
							Args                   []string
						}
						Volumes []struct {
							HostPath struct{ Path, Type string }
						}
					}
				}
			}
		}
	}
	if err := json.Unmarshal(raw, &list); err != nil || len(list.Items) != 4 || list.Items[3].Kind != "DaemonSet" {
		t.Fatalf("want a service account, its cluster role and binding, and one DaemonSet: %v\n%s", err, raw)
	}
	var rules struct {
		Items []struct {
			Rules []struct{ Resources, Verbs []string }
		}
	}
	json.Unmarshal(raw, &rules)
	if r := rules.Items[1].Rules; len(r) != 1 || strings.Join(r[0].Resources, ",") != "nodes" || strings.Join(r[0].Verbs, ",") != "get" {
		t.Errorf("the key service's cluster role grants %+v, want only reading nodes", r)
	}
	pod := list.Items[3].Spec.Template.Spec
	if !pod.HostNetwork || pod.ServiceAccountName != Name {
		t.Errorf("pod: host network %v, service account %q; want host network and its own service account", pod.HostNetwork, pod.ServiceAccountName)
	}
	if pod.NodeSelector["kubernetes.io/hostname"] != "control-plane-0" || len(pod.NodeSelector) != 1 {
		t.Errorf("node selector %v, want the node with the master secret only", pod.NodeSelector)
	}
	c := pod.Containers[0]
	if c.Image != Image() || c.ImagePullPolicy != "Never" || strings.Join(c.Args, " ") != "--listen=$(NODE_IP):9002 --provider=mini --provider-endpoint=http://10.217.0.1:8080 --api-server=https://$(NODE_IP):6443" {
		t.Errorf("container %+v", c)
	}
	var paths []string
	for _, v := range pod.Volumes {
		paths = append(paths, v.HostPath.Type+":"+v.HostPath.Path)
	}
	if strings.Join(paths, ",") != "Socket:/run/constellation/attest.sock,Socket:"+SecretSocket+",DirectoryOrCreate:/var/lib/constellation/key-service" {
		t.Errorf("host paths %v, want only the agent's and the secret's sockets and the disk bindings' directory", paths)
	}
}
