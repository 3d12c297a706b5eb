package kubeapi

import "encoding/json"

// Labels are the labels of this project's component name.
func Labels(name string) map[string]string {
	return map[string]string{"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "constellation"}
}

// Meta is the metadata of the object name of component in kube-system.
func Meta(component, name string) map[string]any {
	return map[string]any{"name": name, "namespace": "kube-system", "labels": Labels(component)}
}

// List encodes objects as one JSON list for `kubectl apply`.
func List(items ...map[string]any) ([]byte, error) {
	return json.MarshalIndent(map[string]any{"apiVersion": "v1", "kind": "List", "items": items}, "", "  ")
}

// Toleration of the control-plane taint, for services that run on control-plane nodes.
var ControlPlaneToleration = map[string]any{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}

// EveryTaint tolerates any taint, for services that run on every node.
var EveryTaint = map[string]any{"operator": "Exists"}

// Volume is a volume of a [HostService]: a host path, a ConfigMap or a Secret, mounted at MountPath.
type Volume struct {
	Name      string
	MountPath string
	ReadOnly  bool
	// HostPath and HostPathType ("Socket", "Directory", ...) mount a path of the node.
	HostPath     string
	HostPathType string
	// ConfigMap mounts a ConfigMap in kube-system.
	ConfigMap string
	// Secret mounts a Secret in kube-system, its files readable by the container's user only; the pod starts
	// without it too (an optional volume), with an empty directory.
	Secret string
}

// HostService is one of this project's services as a DaemonSet in kube-system: one container on the host
// network of the nodes it selects, from an image that is part of the node image and never pulled. Its
// arguments may use $(NODE_IP), the node's address, and $(NODE_NAME), its name.
type HostService struct {
	Name         string
	Image        string
	Args         []string
	NodeSelector map[string]string
	Tolerations  []map[string]any
	// ServiceAccount is the identity the service uses with the API server; empty: the pod gets no API
	// credentials at all.
	ServiceAccount string
	Volumes        []Volume
	// ReadyPort, if set, is a port on the node's address at which the service listens once it serves: the pod
	// is ready only then (a TCP readiness probe).
	ReadyPort int
	// ReadyLocal, if set, is an HTTP endpoint on the node's loopback address (the service listens there on
	// 127.0.0.1 only) that answers 200 OK while the service can serve: the pod is ready only then (an HTTP
	// readiness probe). It takes the place of ReadyPort.
	ReadyLocal *LocalEndpoint
}

// LocalEndpoint is an HTTP endpoint on a node's loopback address.
type LocalEndpoint struct {
	Port int
	Path string
}

// DaemonSet returns the service's DaemonSet object.
func (s HostService) DaemonSet() map[string]any {
	var mounts, volumes []map[string]any
	for _, v := range s.Volumes {
		mounts = append(mounts, map[string]any{"name": v.Name, "mountPath": v.MountPath, "readOnly": v.ReadOnly})
		switch {
		case v.ConfigMap != "":
			volumes = append(volumes, map[string]any{"name": v.Name, "configMap": map[string]any{"name": v.ConfigMap}})
		case v.Secret != "":
			volumes = append(volumes, map[string]any{"name": v.Name, "secret": map[string]any{"secretName": v.Secret, "optional": true, "defaultMode": 0o400}})
		default:
			volumes = append(volumes, map[string]any{"name": v.Name, "hostPath": map[string]any{"path": v.HostPath, "type": v.HostPathType}})
		}
	}
	container := map[string]any{
		"name":            s.Name,
		"image":           s.Image,
		"imagePullPolicy": "Never",
		"args":            s.Args,
		"env": []map[string]any{
			{"name": "NODE_IP", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "status.hostIP"}}},
			{"name": "NODE_NAME", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "spec.nodeName"}}},
		},
		"volumeMounts": mounts,
	}
	switch {
	case s.ReadyLocal != nil:
		// The kubelet runs in the node's network namespace, as the pod does (host network): it reaches the
		// service's loopback address. The answer may take a round trip to another service: a few seconds.
		container["readinessProbe"] = map[string]any{
			"httpGet":       map[string]any{"host": "127.0.0.1", "port": s.ReadyLocal.Port, "path": s.ReadyLocal.Path},
			"periodSeconds": 2, "timeoutSeconds": 5,
		}
	case s.ReadyPort != 0:
		container["readinessProbe"] = map[string]any{"tcpSocket": map[string]any{"port": s.ReadyPort}, "periodSeconds": 2}
	}
	pod := map[string]any{
		"hostNetwork":       true,
		"priorityClassName": "system-cluster-critical",
		"nodeSelector":      s.NodeSelector,
		"tolerations":       s.Tolerations,
		"containers":        []map[string]any{container},
		"volumes":           volumes,
	}
	if s.ServiceAccount != "" {
		pod["serviceAccountName"] = s.ServiceAccount
	} else {
		pod["automountServiceAccountToken"] = false
	}
	labels := Labels(s.Name)
	return map[string]any{
		"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": Meta(s.Name, s.Name),
		"spec": map[string]any{
			"selector": map[string]any{"matchLabels": labels},
			"template": map[string]any{"metadata": map[string]any{"labels": labels}, "spec": pod},
		},
	}
}
