package joinservice

import (
	"fmt"
	"net/http"
	"sync/atomic"
)

// HealthPort is where the join service tells its node's kubelet whether it is ready ([Readiness]), on the
// node's loopback address only: nothing outside the node reaches it.
const HealthPort = 9004

// ReadyPath is the path of the readiness endpoint.
const ReadyPath = "/readyz"

// Readiness answers the kubelet's readiness probe. The join service is ready (200 OK) only once it serves
// ([Readiness.Serving]: its authenticated join configuration is loaded and its listener open), and only while
// it can admit a node: the join configuration is authentic and valid and the measurement policy in force is
// known (a key service answers), which is what every join needs first ([Config.Effective]). Otherwise it
// answers 503 Service Unavailable with the reason. The zero value is ready for use, not ready.
type Readiness struct {
	config atomic.Pointer[Config]
}

// Serving marks the service as serving joins with config.
func (r *Readiness) Serving(config *Config) { r.config.Store(config) }

// ServeHTTP answers GET ReadyPath.
func (r *Readiness) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path != ReadyPath {
		http.NotFound(w, req)
		return
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	c := r.config.Load()
	if c == nil {
		http.Error(w, "not ready: the join service does not serve yet (its join configuration is not loaded)", http.StatusServiceUnavailable)
		return
	}
	if _, err := c.Effective(req.Context()); err != nil {
		http.Error(w, fmt.Sprintf("not ready: no node could join now: %v", err), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}
