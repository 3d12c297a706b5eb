package kubeapi

import (
	"encoding/json"
	"testing"
)

// A Secret volume is optional (the pod starts without the Secret) and its files are readable by the container's
// user only.
func TestSecretVolume(t *testing.T) {
	ds := HostService{Name: "svc", Volumes: []Volume{{Name: "creds", MountPath: "/etc/creds", ReadOnly: true, Secret: "svc-creds"}}}.DaemonSet()
	raw, err := json.Marshal(ds)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Spec struct {
			Template struct {
				Spec struct {
					Volumes []struct {
						Name   string `json:"name"`
						Secret *struct {
							SecretName  string `json:"secretName"`
							Optional    bool   `json:"optional"`
							DefaultMode int    `json:"defaultMode"`
						} `json:"secret"`
					} `json:"volumes"`
				} `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	vs := got.Spec.Template.Spec.Volumes
	if len(vs) != 1 || vs[0].Secret == nil || vs[0].Secret.SecretName != "svc-creds" || !vs[0].Secret.Optional || vs[0].Secret.DefaultMode != 0o400 {
		t.Fatalf("secret volume: %s", raw)
	}
}
