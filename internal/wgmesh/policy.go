package wgmesh

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Routing makes the tunnel the only way between nodes (strict mode).
//
// A peer's node address is itself routed through the tunnel, although the tunnel's own packets go to that
// same address over the link. The routes through the tunnel therefore live in a table of their own, which a
// policy rule selects for every packet except WireGuard's own (they carry Mark). In that table every
// protected range (the node network, the pod network) is unreachable unless a peer's route covers the
// destination: traffic to a node without a tunnel fails at once, it is never sent in plain text. Packets
// that arrive on the link from a protected range are dropped unless they are WireGuard's, come from the
// infrastructure, or belong to a port that may cross in plain text.
type Routing struct {
	// Table is the routing table of the routes through the tunnel.
	Table int
	// Mark is the firewall mark of the tunnel's own packets; they bypass Table.
	Mark uint32
	// Source is this node's address, the source of what it sends through the tunnel.
	Source netip.Addr
	// Link is the underlay interface, on which packets from the protected ranges are filtered.
	Link string
	// Protected are the ranges reached only through the tunnel: the node network and the pod network.
	Protected []netip.Prefix
	// Infrastructure are addresses inside the protected ranges that are not nodes (the provider's): reached
	// directly, in both directions.
	Infrastructure []netip.Prefix
	// Local are this node's own ranges inside the protected ones (its pod range), routed by the main table.
	Local []netip.Prefix
	// PlaintextTCPPorts may cross the link without the tunnel, in both directions, because their protocol
	// attests and encrypts by itself and a node needs it before it has a tunnel: the join service.
	PlaintextTCPPorts []uint16
}

// rulePriority is the first of the priorities of the policy rules (before the main table's 32766).
const rulePriority = 5200

// ingressChain is the chain of the raw table that filters what arrives on the link.
const ingressChain = "CONSTELLATION-MESH"

func (r *Routing) check() error {
	switch {
	case r.Table <= 0 || r.Table == unix.RT_TABLE_MAIN || r.Table == unix.RT_TABLE_LOCAL || r.Table == unix.RT_TABLE_DEFAULT:
		return fmt.Errorf("WireGuard routing: table %d is not a table of its own", r.Table)
	case r.Mark == 0:
		return errors.New("WireGuard routing: no firewall mark for the tunnel's own packets")
	case r.Link == "":
		return errors.New("WireGuard routing: no link interface")
	case len(r.Protected) == 0:
		return errors.New("WireGuard routing: no protected range, nothing would go through the tunnel")
	case r.Source.IsValid() && !r.Source.Is4():
		return fmt.Errorf("WireGuard routing: source %s is not an IPv4 address", r.Source)
	}
	for _, p := range append(append(append([]netip.Prefix{}, r.Protected...), r.Infrastructure...), r.Local...) {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("WireGuard routing: %s is not an IPv4 prefix", p)
		}
	}
	return nil
}

func (r *Routing) rules() []*netlink.Rule {
	var rules []*netlink.Rule
	for _, port := range r.PlaintextTCPPorts {
		for _, dir := range []string{"dport", "sport"} {
			rule := netlink.NewRule()
			rule.Family = unix.AF_INET
			rule.Priority = rulePriority
			rule.Table = unix.RT_TABLE_MAIN
			rule.IPProto = unix.IPPROTO_TCP
			if dir == "dport" {
				rule.Dport = netlink.NewRulePortRange(port, port)
			} else {
				rule.Sport = netlink.NewRulePortRange(port, port)
			}
			rules = append(rules, rule)
		}
	}
	rule := netlink.NewRule()
	rule.Family = unix.AF_INET
	rule.Priority = rulePriority + 10
	rule.Table = r.Table
	rule.Mark = r.Mark
	rule.Invert = true
	return append(rules, rule)
}

// install sets up the table's fixed routes, the policy rules and the filter on the link. It replaces what
// an earlier install left.
func (r *Routing) install(listenPort int) error {
	for _, p := range r.Protected {
		if err := netlink.RouteReplace(&netlink.Route{Dst: ipNet(p), Table: r.Table, Type: unix.RTN_UNREACHABLE}); err != nil {
			return fmt.Errorf("making %s reachable only through the tunnel: %w", p, err)
		}
	}
	for _, p := range append(append([]netip.Prefix{}, r.Infrastructure...), r.Local...) {
		if err := netlink.RouteReplace(&netlink.Route{Dst: ipNet(p), Table: r.Table, Type: unix.RTN_THROW}); err != nil {
			return fmt.Errorf("routing %s directly: %w", p, err)
		}
	}
	for _, rule := range r.rules() {
		if err := netlink.RuleAdd(rule); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("adding the policy rule %s: %w", rule, err)
		}
	}
	return r.filterLink(listenPort)
}

// filterLink drops what arrives on the link from the protected ranges, except WireGuard, the
// infrastructure and the plain-text ports. The raw table sees packets before routing, for this node and for
// its pods alike.
func (r *Routing) filterLink(listenPort int) error {
	ipt := func(args ...string) error {
		out, err := exec.Command("iptables", append([]string{"-w", "-t", "raw"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if ipt("-N", ingressChain) != nil { // exists already: start it over
		if err := ipt("-F", ingressChain); err != nil {
			return err
		}
	}
	var rules [][]string
	for _, p := range r.Infrastructure {
		rules = append(rules, []string{"-s", p.String(), "-j", "RETURN"})
	}
	rules = append(rules, []string{"-p", "udp", "--dport", strconv.Itoa(listenPort), "-j", "RETURN"})
	for _, port := range r.PlaintextTCPPorts {
		p := strconv.Itoa(int(port))
		rules = append(rules, []string{"-p", "tcp", "--dport", p, "-j", "RETURN"}, []string{"-p", "tcp", "--sport", p, "-j", "RETURN"})
	}
	for _, p := range r.Protected {
		rules = append(rules, []string{"-s", p.String(), "-j", "DROP"})
	}
	for _, rule := range rules {
		if err := ipt(append([]string{"-A", ingressChain}, rule...)...); err != nil {
			return err
		}
	}
	jump := []string{"PREROUTING", "-i", r.Link, "-j", ingressChain}
	if ipt(append([]string{"-C"}, jump...)...) != nil {
		return ipt(append([]string{"-I"}, jump...)...)
	}
	return nil
}

// Remove undoes what Start installed for r: the policy rules, the table and the filter on the link. After
// it, traffic between nodes is no longer forced through a tunnel.
func (r *Routing) Remove() {
	for _, rule := range r.rules() {
		netlink.RuleDel(rule)
	}
	if routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: r.Table}, netlink.RT_FILTER_TABLE); err == nil {
		for _, rt := range routes {
			netlink.RouteDel(&rt)
		}
	}
	exec.Command("iptables", "-w", "-t", "raw", "-D", "PREROUTING", "-i", r.Link, "-j", ingressChain).Run()
	exec.Command("iptables", "-w", "-t", "raw", "-F", ingressChain).Run()
	exec.Command("iptables", "-w", "-t", "raw", "-X", ingressChain).Run()
}
