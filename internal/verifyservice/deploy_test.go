package verifyservice

import (
	"encoding/json"
	"testing"
)

// The verification service's pods are ready once it listens on the node's address (it serves evidence from
// then on), not as soon as the container starts.
func TestDaemonSetReadiness(t *testing.T) {
	raw, err := Manifests()
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Items []struct {
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							ReadinessProbe *struct{ TCPSocket *struct{ Port int } }
						}
					}
				}
			}
		}
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 {
		t.Fatalf("%d objects, want the DaemonSet", len(list.Items))
	}
	p := list.Items[0].Spec.Template.Spec.Containers[0].ReadinessProbe
	if p == nil || p.TCPSocket == nil || p.TCPSocket.Port != ClusterPort {
		t.Errorf("readiness probe %+v, want a TCP probe of port %d", p, ClusterPort)
	}
}
