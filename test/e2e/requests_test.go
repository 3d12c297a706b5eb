package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/constellation-dev/constellation/internal/provider/mini"
)

// requests sends HTTP requests to a Service of the cluster, one after another, as a user of the application
// would, from the network namespace of one of the nodes (the host's own traffic does not reach a Service: the
// nodes admit nothing in plain text but the operator's ports). The nodes are replaced one by one meanwhile, so
// the client moves to another node when its node is cordoned (before the upgrade controller drains and removes
// a node). A request that fails while the client's own node leaves is not counted: it says nothing about the
// application. That a request failed for that reason is decided by a look at the nodes that began after the
// failure: a node is cordoned before it is removed, so a failure caused by its removal is always seen as such.
type requests struct {
	t      *testing.T
	addr   string
	dir    string
	k      func(args ...string) (string, error)
	quit   chan struct{}
	done   sync.WaitGroup
	mu     sync.Mutex
	cond   *sync.Cond
	usable map[string]int // schedulable, Ready nodes, by name: their first process
	polled time.Time      // when the last look at the nodes that succeeded began
	// results
	sent, void int
	failures   []string
}

// startRequests starts sending requests to addr (a Service's cluster IP and port) until stop.
func startRequests(t *testing.T, cl *cluster, addr string) *requests {
	r := &requests{t: t, addr: addr, dir: filepath.Join(cl.c.ws, "constellation-mini"), k: cl.k, quit: make(chan struct{})}
	r.cond = sync.NewCond(&r.mu)
	r.done.Add(2)
	go r.watchNodes()
	go r.send()
	t.Cleanup(func() { r.stop() })
	return r
}

// stop ends the requests and returns how many were sent, the failures, and how many were not counted.
func (r *requests) stop() (sent int, failures []string, void int) {
	select {
	case <-r.quit:
	default:
		close(r.quit)
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	}
	r.done.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sent, slices.Clone(r.failures), r.void
}

func (r *requests) stopped() bool {
	select {
	case <-r.quit:
		return true
	default:
		return false
	}
}

// watchNodes looks at the nodes every second: which are schedulable and Ready, and their processes.
func (r *requests) watchNodes() {
	defer r.done.Done()
	for !r.stopped() {
		began := time.Now()
		out, err := r.k("get", "nodes", "--no-headers", "-o", `custom-columns=NAME:.metadata.name,UNSCHEDULABLE:.spec.unschedulable,READY:.status.conditions[?(@.type=="Ready")].status`)
		state, found, serr := mini.ReadState(r.dir)
		if err == nil && serr == nil && found {
			pids := map[string]int{}
			for _, n := range state.Nodes {
				pids[n.Name] = n.PID
			}
			usable := map[string]int{}
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if f := strings.Fields(line); len(f) == 3 && f[1] != "true" && f[2] == "True" && pids[f[0]] > 0 {
					usable[f[0]] = pids[f[0]]
				}
			}
			r.mu.Lock()
			r.usable, r.polled = usable, began
			r.cond.Broadcast()
			r.mu.Unlock()
		}
		select {
		case <-r.quit:
		case <-time.After(time.Second):
		}
	}
}

// send sends a request every 100 ms from the node it uses, moving to another one when that node is no longer
// schedulable.
func (r *requests) send() {
	defer r.done.Done()
	node := ""
	for !r.stopped() {
		r.mu.Lock()
		for r.usable == nil && !r.stopped() {
			r.cond.Wait()
		}
		if _, ok := r.usable[node]; !ok {
			node = ""
			for name := range r.usable {
				node = max(node, name) // the newest, by name: the one replaced last
			}
		}
		pid := r.usable[node]
		r.mu.Unlock()
		if node == "" {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		err := getInNetns(pid, r.addr)
		failedAt := time.Now()
		counted := true
		r.mu.Lock()
		r.sent++
		if err != nil {
			// Wait for a look at the nodes that began after the failure: is the client's node leaving?
			for !r.polled.After(failedAt) && !r.stopped() {
				r.cond.Wait()
			}
			if _, counted = r.usable[node]; !counted {
				r.void++
			}
		}
		r.mu.Unlock()
		if err != nil && counted {
			// Where the connection went, and where the application's pods were: what failed.
			failure := fmt.Sprintf("%s from %s: %v\n%s", failedAt.UTC().Format("15:04:05.000"), node, err, r.diagnose(pid))
			r.mu.Lock()
			r.failures = append(r.failures, failure)
			r.mu.Unlock()
		}
		select {
		case <-r.quit:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// diagnose says where the client's unanswered connections to the Service went (the node's connection tracking:
// the pod its kube-proxy chose) and where the application's pods and endpoints are.
func (r *requests) diagnose(pid int) string {
	host, port, _ := net.SplitHostPort(r.addr)
	var b strings.Builder
	ct, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "conntrack", "-L", "-p", "tcp", "-d", host, "--dport", port).CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(ct)), "\n") {
		if err != nil || !strings.Contains(line, "ESTABLISHED") && !strings.Contains(line, "TIME_WAIT") && !strings.Contains(line, "flow entries") {
			fmt.Fprintf(&b, "          conntrack: %s\n", line)
		}
	}
	pods, _ := r.k("get", "pods", "-l", "app=web", "--no-headers", "-o", "custom-columns=NAME:.metadata.name,IP:.status.podIP,NODE:.spec.nodeName,READY:.status.containerStatuses[0].ready,DELETING:.metadata.deletionTimestamp")
	fmt.Fprintf(&b, "          pods: %s\n", strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(pods), "\n", " |")), " "))
	eps, _ := r.k("get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o", `jsonpath={range .items[*].endpoints[*]}{.addresses[0]}@{.nodeName}(ready={.conditions.ready},terminating={.conditions.terminating}) {end}`)
	fmt.Fprintf(&b, "          endpoints: %s", strings.TrimSpace(eps))
	return b.String()
}

// getInNetns sends GET /version to addr over a new connection from the network namespace of the process pid
// and checks that etcd answered.
func getInNetns(pid int, addr string) error {
	errc := make(chan error, 1)
	go func() {
		// The socket is made in the namespace of the thread that makes it; this thread is never unlocked, so it
		// ends with this goroutine rather than serve another in the node's namespace.
		runtime.LockOSThread()
		ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering the node's network namespace: %w", err)
			return
		}
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			errc <- err
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "GET /version HTTP/1.0\r\nHost: web\r\n\r\n"); err != nil {
			errc <- err
			return
		}
		body, err := io.ReadAll(conn)
		switch {
		case err != nil:
			errc <- err
		case !strings.HasPrefix(string(body), "HTTP/1.0 200") && !strings.HasPrefix(string(body), "HTTP/1.1 200") || !strings.Contains(string(body), "etcdserver"):
			errc <- errors.New("unexpected answer: " + firstLineOf(string(body)))
		default:
			errc <- nil
		}
	}()
	return <-errc
}

func firstLineOf(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(line)
}
