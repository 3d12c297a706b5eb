package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/constellation-dev/constellation/internal/kubeapi"
)

// The soak load's report: a ConfigMap per pod, named statusPrefix + the pod's name and labelled StatusLabel,
// whose data says how many rounds succeeded and failed, and why the last one failed.
const (
	statusPrefix = "soak-status-"
	statusLabel  = "soak-status"
)

// soakConfig configures the soak load of one pod.
type soakConfig struct {
	pod, namespace string // this pod (downward API)
	dataDir        string // where each round writes and reads back a file (the node's state disk)
	peers          string // label selector of the pods this one exchanges payloads with
	port           int    // the peers' HTTP port
	period         time.Duration
	diskBytes      int
	payloadBytes   int
}

// soakStats are the counters a pod reports.
type soakStats struct {
	Rounds, OK, Failed int
	DiskBytes          int64 // written and read back
	PeerExchanges      int   // payloads echoed by a peer on another node
	LastPeers          int   // peers reached in the last round
	LastError          string
}

// soak runs rounds until ctx ends. Each round writes a file of random bytes to the data directory, syncs it and
// reads it back; sends a random payload to every other ready peer pod (through the cluster's network, from
// node to node) and checks the echo; and writes the pod's counters into its ConfigMap (an API write). A round
// fails on the first error; the next round starts afresh.
func soak(ctx context.Context, c soakConfig) error {
	api, err := inClusterAPI()
	if err != nil {
		return err
	}
	httpc := &http.Client{Timeout: 10 * time.Second}
	var st soakStats
	tick := time.NewTicker(c.period)
	defer tick.Stop()
	for {
		st.Rounds++
		peers, written, err := soakRound(ctx, c, api, httpc)
		if err == nil {
			st.OK++
			st.DiskBytes += int64(written)
			st.PeerExchanges += peers
			st.LastPeers = peers
		} else {
			st.Failed++
			st.LastError = time.Now().UTC().Format(time.RFC3339) + " round " + strconv.Itoa(st.Rounds) + ": " + err.Error()
			fmt.Fprintln(os.Stderr, st.LastError)
		}
		// The report is itself the round's API write; a failed report fails the round, counted in the next one.
		if err := report(ctx, api, c, st); err != nil {
			st.Failed++
			st.LastError = time.Now().UTC().Format(time.RFC3339) + " report of round " + strconv.Itoa(st.Rounds) + ": " + err.Error()
			fmt.Fprintln(os.Stderr, st.LastError)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// inClusterAPI reaches the API server as the pod's service account.
func inClusterAPI() (*kubeapi.Client, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set: not in a pod")
	}
	return kubeapi.FromServiceAccount("https://"+net.JoinHostPort(host, port), kubeapi.ServiceAccountDir)
}

// soakRound runs one round; it returns the number of peers that echoed the payload and the bytes written to
// disk.
func soakRound(ctx context.Context, c soakConfig, api *kubeapi.Client, httpc *http.Client) (int, int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := diskRound(c.dataDir, c.diskBytes); err != nil {
		return 0, 0, err
	}
	ips, err := readyPeers(ctx, api, c)
	if err != nil {
		return 0, 0, err
	}
	for _, ip := range ips {
		if err := echoRound(ctx, httpc, "http://"+net.JoinHostPort(ip, strconv.Itoa(c.port))+"/echo", c.payloadBytes); err != nil {
			return 0, 0, err
		}
	}
	return len(ips), c.diskBytes, nil
}

// diskRound writes n random bytes to a file in dir, syncs it, and reads it back.
func diskRound(dir string, n int) error {
	want := make([]byte, n)
	rand.Read(want)
	path := filepath.Join(dir, "soak.bin")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	if _, err := f.Write(want); err != nil {
		f.Close()
		return fmt.Errorf("disk: writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("disk: syncing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("disk: reading back %s: %w", path, err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("disk: %s read back differs from what was written", path)
	}
	return nil
}

// readyPeers lists the addresses of the other ready pods of the selector.
func readyPeers(ctx context.Context, api *kubeapi.Client, c soakConfig) ([]string, error) {
	var list struct {
		Items []struct {
			Metadata struct{ Name string }
			Status   struct {
				PodIP      string
				Conditions []struct{ Type, Status string }
			}
		}
	}
	path := "/api/v1/namespaces/" + c.namespace + "/pods?labelSelector=" + url.QueryEscape(c.peers)
	if err := api.Do(ctx, http.MethodGet, path, "", nil, &list); err != nil {
		return nil, fmt.Errorf("listing the peers: %w", err)
	}
	var ips []string
	for _, p := range list.Items {
		ready := false
		for _, cond := range p.Status.Conditions {
			ready = ready || (cond.Type == "Ready" && cond.Status == "True")
		}
		if p.Metadata.Name != c.pod && ready && p.Status.PodIP != "" {
			ips = append(ips, p.Status.PodIP)
		}
	}
	return ips, nil
}

// echoRound sends n random bytes to url and checks that the answer is the same bytes.
func echoRound(ctx context.Context, httpc *http.Client, url string, n int) error {
	want := make([]byte, n)
	rand.Read(want)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(want))
	if err != nil {
		return err
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return fmt.Errorf("peer: %w", err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(io.LimitReader(resp.Body, int64(n)+1))
	if err != nil {
		return fmt.Errorf("peer %s: reading the echo: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, want) {
		sum := sha256.Sum256(got)
		return fmt.Errorf("peer %s: %s, echo of %d bytes (sha256 %s) differs from the %d bytes sent", url, resp.Status, len(got), hex.EncodeToString(sum[:8]), n)
	}
	return nil
}

// echo answers a POST with its body.
func echo(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST a payload", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Write(body)
}

// report writes st into the pod's status ConfigMap, creating it at first.
func report(ctx context.Context, api *kubeapi.Client, c soakConfig, st soakStats) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	data := map[string]string{
		"pod":           c.pod,
		"rounds":        strconv.Itoa(st.Rounds),
		"ok":            strconv.Itoa(st.OK),
		"failed":        strconv.Itoa(st.Failed),
		"diskBytes":     strconv.FormatInt(st.DiskBytes, 10),
		"peerExchanges": strconv.Itoa(st.PeerExchanges),
		"lastPeers":     strconv.Itoa(st.LastPeers),
		"lastError":     st.LastError,
	}
	name := statusPrefix + c.pod
	base := "/api/v1/namespaces/" + c.namespace + "/configmaps"
	err := api.Do(ctx, http.MethodPatch, base+"/"+name, kubeapi.MergePatch, map[string]any{"data": data}, nil)
	if !kubeapi.IsStatus(err, http.StatusNotFound) {
		return err
	}
	cm := map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": name, "labels": map[string]string{"app": statusLabel}},
		"data":     data,
	}
	return api.Do(ctx, http.MethodPost, base, "", cm, nil)
}

// soakFlags reads the soak's settings from the pod's environment (downward API) and the flags.
func soakFlags(dataDir, peers string, port int, period time.Duration) (soakConfig, error) {
	c := soakConfig{pod: os.Getenv("POD_NAME"), namespace: os.Getenv("POD_NAMESPACE"), dataDir: dataDir, peers: peers, port: port,
		period: period, diskBytes: 1 << 20, payloadBytes: 256 << 10}
	if c.pod == "" || c.namespace == "" {
		return c, errors.New("POD_NAME and POD_NAMESPACE must be set (downward API)")
	}
	if strings.TrimSpace(peers) == "" || dataDir == "" {
		return c, errors.New("-soak needs -data and -peers")
	}
	return c, nil
}
