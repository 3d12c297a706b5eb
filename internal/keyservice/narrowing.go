package keyservice

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/kubeapi"
)

// The pre-authored narrowing of an upgrade: when the CLI starts an upgrade it sends the key services the
// two-set update of epoch N (old and new image) and leaves here the update of epoch N+1 that accepts the new
// image only, with its MAC, so that the upgrade controller, which never holds the master secret, can put it in
// force ([SendPolicy]) once the last node of the old image is gone. Nothing of it is secret; whoever can edit
// the ConfigMap can only delete it (the window then stays open until the CLI narrows it) or put an update there
// that the key services refuse (its MAC, or an epoch not above the one in force).
const (
	// NarrowingConfigMap is the ConfigMap in kube-system that holds the pre-authored narrowing.
	NarrowingConfigMap = "measurement-policy"
	// NarrowingKey is its key: package policyupdate's wire form.
	NarrowingKey = "narrowing"
	// WindowKey holds the upgrade's two-set update beside it, which the CLI reads back to know both images.
	WindowKey = "window"
)

func narrowingPath() string {
	return "/api/v1/namespaces/kube-system/configmaps/" + NarrowingConfigMap
}

// StoreNarrowing leaves the narrowing of an upgrade in the cluster ([NarrowingConfigMap]) with the upgrade's
// two-set update window, replacing what was left before.
func StoreNarrowing(ctx context.Context, api *kubeapi.Client, window, narrowing []byte) error {
	for _, raw := range [][]byte{window, narrowing} {
		if _, err := policyupdate.Parse(raw); err != nil {
			return err
		}
	}
	obj := map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": NarrowingConfigMap, "namespace": "kube-system", "labels": kubeapi.Labels(Name)},
		"data":     map[string]string{NarrowingKey: string(narrowing), WindowKey: string(window)},
	}
	err := api.Do(ctx, http.MethodPost, "/api/v1/namespaces/kube-system/configmaps", "", obj, nil)
	if kubeapi.IsStatus(err, http.StatusConflict) {
		err = api.Do(ctx, http.MethodPut, narrowingPath(), "", obj, nil)
	}
	if err != nil {
		return fmt.Errorf("leaving the upgrade's narrowing in ConfigMap kube-system/%s: %w", NarrowingConfigMap, err)
	}
	return nil
}

// LoadNarrowing returns the narrowing left in the cluster (found false: none). It is parsed, not verified: the
// key services verify it.
func LoadNarrowing(ctx context.Context, api *kubeapi.Client) (u *policyupdate.Update, raw []byte, found bool, err error) {
	return loadLeft(ctx, api, NarrowingKey)
}

// LoadWindow returns the two-set update of the upgrade whose narrowing is left in the cluster (found false:
// none), parsed, not verified.
func LoadWindow(ctx context.Context, api *kubeapi.Client) (u *policyupdate.Update, raw []byte, found bool, err error) {
	return loadLeft(ctx, api, WindowKey)
}

func loadLeft(ctx context.Context, api *kubeapi.Client, key string) (u *policyupdate.Update, raw []byte, found bool, err error) {
	var cm struct {
		Data map[string]string `json:"data"`
	}
	err = api.Do(ctx, http.MethodGet, narrowingPath(), "", nil, &cm)
	if kubeapi.IsStatus(err, http.StatusNotFound) {
		return nil, nil, false, nil
	}
	if err != nil {
		return nil, nil, false, fmt.Errorf("reading ConfigMap kube-system/%s: %w", NarrowingConfigMap, err)
	}
	s, ok := cm.Data[key]
	if !ok {
		return nil, nil, false, nil
	}
	if u, err = policyupdate.Parse([]byte(s)); err != nil {
		return nil, nil, false, fmt.Errorf("ConfigMap kube-system/%s: %w", NarrowingConfigMap, err)
	}
	return u, []byte(s), true, nil
}

// DeleteNarrowing removes the narrowing left in the cluster, if any.
func DeleteNarrowing(ctx context.Context, api *kubeapi.Client) error {
	err := api.Do(ctx, http.MethodDelete, narrowingPath(), "", nil, nil)
	if err != nil && !kubeapi.IsStatus(err, http.StatusNotFound) {
		return fmt.Errorf("removing ConfigMap kube-system/%s: %w", NarrowingConfigMap, err)
	}
	return nil
}

// SendPolicy sends the update raw to the policy port of the key service at each of addrs ([PolicyPort]),
// trusting a key service that v accepts, and returns the update each has in force afterwards, by address. It
// fails, naming every key service that refused or did not answer, unless each has exactly raw's update in
// force: the same update sent again is accepted, so a failed SendPolicy can be repeated.
func SendPolicy(ctx context.Context, addrs []string, v attestation.Validator, raw []byte) (map[string]*policyupdate.Update, error) {
	want, err := policyupdate.Parse(raw)
	if err != nil {
		return nil, err
	}
	inForce := map[string]*policyupdate.Update{}
	var errs []error
	for _, addr := range addrs {
		u, err := func() (*policyupdate.Update, error) {
			c, err := NewPolicyClient(addr, []attestation.Validator{v})
			if err != nil {
				return nil, err
			}
			defer c.Close()
			return c.UpdateMeasurementPolicy(ctx, raw)
		}()
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("key service %s: %w", addr, err))
		case !u.Same(want):
			errs = append(errs, fmt.Errorf("key service %s has %s in force, not the update sent", addr, u))
		default:
			inForce[addr] = u
		}
	}
	if len(errs) > 0 {
		return inForce, fmt.Errorf("the measurement policy update (%s) is not in force at every key service: %w", want, errors.Join(errs...))
	}
	return inForce, nil
}

// InForce is what a key service enforces: the update in force (nil: none since init) and the measurements of
// the cluster's init.
type InForce struct {
	Update *policyupdate.Update
	Init   measurements.M
}

// Sets returns the measurement sets in force.
func (f InForce) Sets() []measurements.M {
	if f.Update == nil {
		return []measurements.M{f.Init}
	}
	return f.Update.Sets
}

// PolicyInForce asks the key service at each of addrs, trusted by v, for its measurement policy in force.
func PolicyInForce(ctx context.Context, addrs []string, v attestation.Validator) (map[string]InForce, error) {
	out := map[string]InForce{}
	var errs []error
	for _, addr := range addrs {
		f, err := func() (InForce, error) {
			c, err := NewPolicyClient(addr, []attestation.Validator{v})
			if err != nil {
				return InForce{}, err
			}
			defer c.Close()
			u, base, err := c.GetMeasurementPolicy(ctx)
			return InForce{Update: u, Init: base}, err
		}()
		if err != nil {
			errs = append(errs, fmt.Errorf("key service %s: %w", addr, err))
			continue
		}
		out[addr] = f
	}
	return out, errors.Join(errs...)
}
