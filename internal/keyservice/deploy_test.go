package keyservice

import (
	"encoding/json"
	"strings"
	"testing"
)

// The key service runs on every control-plane node; its service account may only read and create ConfigMaps
// in the namespace of the disk bindings (no update, no delete: a binding is made once), and read Node objects
// (their quarantine mark), nothing else.
func TestManifests(t *testing.T) {
	raw, err := Manifests("mini", "http://10.217.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	type rule struct {
		APIGroups, Resources, Verbs, ResourceNames []string
	}
	var list struct {
		Items []struct {
			Kind     string
			Metadata struct{ Name, Namespace string }
			Rules    []rule
			RoleRef  struct{ Kind, Name string }
			Subjects []struct{ Kind, Name, Namespace string }
			Spec     struct {
				Template struct {
					Spec struct {
						HostNetwork                  bool
						AutomountServiceAccountToken *bool
						ServiceAccountName           string
						NodeSelector                 map[string]string
						Containers                   []struct {
							Image, ImagePullPolicy string
							Args                   []string
							ReadinessProbe         struct{ TCPSocket struct{ Port int } }
						}
						Volumes []struct {
							HostPath struct{ Path, Type string }
						}
					}
				}
			}
		}
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, it := range list.Items {
		kinds = append(kinds, it.Kind+":"+it.Metadata.Namespace+"/"+it.Metadata.Name)
	}
	if got := strings.Join(kinds, ","); got != "Namespace:/"+DiskBindingsNamespace+",ServiceAccount:kube-system/key-service,ClusterRole:/"+clusterRoleName+",ClusterRoleBinding:/"+clusterRoleName+",Role:"+DiskBindingsNamespace+"/key-service,RoleBinding:"+DiskBindingsNamespace+"/key-service,DaemonSet:kube-system/key-service" {
		t.Fatalf("objects %s", got)
	}
	// Outside its namespace it may only read Node objects (for their quarantine mark).
	if r := list.Items[2].Rules; len(r) != 1 || strings.Join(r[0].Resources, ",") != "nodes" || strings.Join(r[0].Verbs, ",") != "get" {
		t.Errorf("the key service's cluster role grants %+v, want only reading nodes", r)
	}
	if b := list.Items[3]; b.RoleRef.Name != clusterRoleName || len(b.Subjects) != 1 || b.Subjects[0] != (struct{ Kind, Name, Namespace string }{"ServiceAccount", Name, "kube-system"}) {
		t.Errorf("cluster role binding %+v %+v, want the key service's service account only", b.RoleRef, b.Subjects)
	}
	role, binding := list.Items[4], list.Items[5]
	if len(role.Rules) != 1 || strings.Join(role.Rules[0].APIGroups, ",") != "" || strings.Join(role.Rules[0].Resources, ",") != "configmaps" || strings.Join(role.Rules[0].Verbs, ",") != "get,create" {
		t.Errorf("role %+v, want get and create of ConfigMaps only", role.Rules)
	}
	if binding.RoleRef.Kind != "Role" || binding.RoleRef.Name != Name || len(binding.Subjects) != 1 || binding.Subjects[0] != (struct{ Kind, Name, Namespace string }{"ServiceAccount", Name, "kube-system"}) {
		t.Errorf("role binding %+v %+v, want the key service's service account only", binding.RoleRef, binding.Subjects)
	}
	pod := list.Items[6].Spec.Template.Spec
	if !pod.HostNetwork || pod.AutomountServiceAccountToken != nil || pod.ServiceAccountName != Name {
		t.Errorf("pod: host network %v, API credentials %v %q; want host network and the key service's account", pod.HostNetwork, pod.AutomountServiceAccountToken, pod.ServiceAccountName)
	}
	if _, ok := pod.NodeSelector["node-role.kubernetes.io/control-plane"]; !ok || len(pod.NodeSelector) != 1 {
		t.Errorf("node selector %v, want every control-plane node", pod.NodeSelector)
	}
	c := pod.Containers[0]
	if c.Image != Image() || c.ImagePullPolicy != "Never" || strings.Join(c.Args, " ") != "--listen=$(NODE_IP):9002 --policy-listen=$(NODE_IP):9003 --api-server=https://$(NODE_IP):6443 --provider=mini --provider-endpoint=http://10.217.0.1:8080" {
		t.Errorf("container %+v", c)
	}
	if c.ReadinessProbe.TCPSocket.Port != Port {
		t.Errorf("readiness %+v, want ready once it listens (it serves) at %d", c.ReadinessProbe, Port)
	}
	var paths []string
	for _, v := range pod.Volumes {
		paths = append(paths, v.HostPath.Type+":"+v.HostPath.Path)
	}
	if strings.Join(paths, ",") != "Socket:/run/constellation/attest.sock,Socket:"+SecretSocket+",DirectoryOrCreate:/var/lib/constellation/key-service" {
		t.Errorf("host paths %v, want only the agent's and the secret's sockets and the legacy disk bindings' directory", paths)
	}
}
