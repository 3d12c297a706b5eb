package suite

import (
	"context"
	"net"
	"slices"
	"strconv"

	"github.com/constellation-dev/constellation/internal/wgmesh/wgmeshtest"
)

func init() {
	register(Suite{Names: []string{"net-wireguard", "net-plain", "net-wireguard-ratio"}, Run: runNet})
}

// runNet measures TCP throughput between two nodes (network namespaces linked by a veth pair) through the
// userspace WireGuard tunnel and, interleaved in the same run, over the same link without it. The binary must
// call wgmeshtest.MaybeRunHelper first (tools/bench does).
func runNet(ctx context.Context) ([]Result, error) {
	p, err := wgmeshtest.NewPair()
	if err != nil {
		return nil, err
	}
	defer p.Close()
	const size = 256 << 20
	port := strconv.Itoa(wgmeshtest.SinkPort)
	var wg, plain []float64
	for range 5 {
		w, err := p.Throughput(net.JoinHostPort(wgmeshtest.TunnelB, port), size)
		if err != nil {
			return nil, err
		}
		pl, err := p.Throughput(net.JoinHostPort(wgmeshtest.LinkB, port), size)
		if err != nil {
			return nil, err
		}
		wg, plain = append(wg, w), append(plain, pl)
	}
	slices.Sort(wg)
	slices.Sort(plain)
	return []Result{
		{"net-wireguard", wg[len(wg)/2], "Mbit/s"},
		{"net-plain", plain[len(plain)/2], "Mbit/s"},
		{"net-wireguard-ratio", wg[len(wg)/2] / plain[len(plain)/2], "x"},
	}, nil
}
