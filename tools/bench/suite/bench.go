// Package suite is the body of the project's benchmark suite, run by the command tools/bench. Every performance
// figure the project states comes from here: `make bench` prints one line per figure, "<name> <value> <unit>";
// BENCH=<name> selects one.
//
// Figures use real parts: the reference TPM simulator, swtpm processes, loopback TCP, virtual machines under
// QEMU (TCG) for what only a guest kernel has (kernel WireGuard, device-mapper).
package suite

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"
)

// Result is one measured figure.
type Result struct {
	Name  string
	Value float64
	Unit  string
}

func (r Result) String() string {
	return fmt.Sprintf("%s %s %s", r.Name, formatValue(r.Value), r.Unit)
}

func formatValue(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// Suite is a group of figures measured together (they share setup, and ratios need the same run).
type Suite struct {
	// Names are the figures the suite reports; BENCH selects a suite by any of them.
	Names []string
	Run   func(ctx context.Context) ([]Result, error)
	// OnRequest suites take long (a cold build of Kubernetes): they run only when BENCH names them.
	OnRequest bool
}

var suites []Suite

func register(s Suite) { suites = append(suites, s) }

// Names lists every figure.
func Names() []string {
	var out []string
	for _, s := range suites {
		out = append(out, s.Names...)
	}
	return out
}

// Run runs the suites that report any of selected (all when empty) and writes their results to w.
func Run(ctx context.Context, w io.Writer, selected []string) error {
	ran := false
	for _, s := range suites {
		if len(selected) > 0 && !slices.ContainsFunc(s.Names, func(n string) bool { return slices.Contains(selected, n) }) {
			continue
		}
		if len(selected) == 0 && s.OnRequest {
			continue
		}
		ran = true
		results, err := s.Run(ctx)
		if err != nil {
			return fmt.Errorf("benchmark %s: %w", strings.Join(s.Names, ", "), err)
		}
		for _, r := range results {
			if len(selected) == 0 || slices.Contains(selected, r.Name) || slices.Contains(selected, s.Names[0]) {
				fmt.Fprintln(w, r)
			}
		}
	}
	if !ran {
		return fmt.Errorf("no benchmark named %s; known: %s", strings.Join(selected, ", "), strings.Join(Names(), ", "))
	}
	return nil
}

// interleavedMedians runs the functions round-robin n times (after warm-up rounds) and returns the median
// duration of each. Interleaving exposes every function to the same machine conditions, so their ratios are
// meaningful even when the machine's speed drifts during the run.
func interleavedMedians(n int, fns ...func() error) ([]time.Duration, error) {
	ds := make([][]time.Duration, len(fns))
	for round := range n + max(n/10, 3) {
		for i, fn := range fns {
			start := time.Now()
			if err := fn(); err != nil {
				return nil, err
			}
			if round >= max(n/10, 3) {
				ds[i] = append(ds[i], time.Since(start))
			}
		}
	}
	out := make([]time.Duration, len(fns))
	for i, d := range ds {
		sort.Slice(d, func(a, b int) bool { return d[a] < d[b] })
		out[i] = d[len(d)/2]
	}
	return out, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
