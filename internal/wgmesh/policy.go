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
// destination: traffic to a node without a tunnel fails at once, it is never sent in plain text.
//
// Two policy rules take the join service's traffic (PlaintextTCPPorts) out of the tunnel, and only this
// node's own: they match locally generated packets (iif lo) to or from those ports, never forwarded ones, so
// a pod's traffic always goes through the tunnel.
//
// The link is filtered in both directions, by packet filter chains that see the connection tracking state.
// They hook into the mangle table, after conntrack (the raw table runs before it and could only match
// ports, and "source port 9001" is chosen by whoever sends the packet: matching it opened every port of the
// node and of its pods to anyone on the node network). What arrives on the link from a protected range is
// dropped unless it is
//   - WireGuard, to this node's own address and listen port;
//   - a connection to the join service on this node's own address (destination port in PlaintextTCPPorts,
//     original direction, destination an address of this node: never a pod);
//   - a reply to a join connection this node opened itself (conntrack: reply direction, original
//     destination port in PlaintextTCPPorts, destination this node);
//   - from the infrastructure: a reply to a connection this node or one of its pods opened to it (the
//     metadata service, a KMS), or a connection to one of this node's OperatorTCPPorts.
//
// What leaves on the link to a protected range is dropped unless it is WireGuard's (Mark), this node's own
// join traffic (the original direction to, or the reply direction from, a port in PlaintextTCPPorts), or
// addressed to the infrastructure: whatever a misrouted packet would be, it does not cross in plain text.
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
	// directly. From them, only replies to this node's own connections and connections to OperatorTCPPorts
	// are accepted.
	Infrastructure []netip.Prefix
	// OperatorTCPPorts are ports of this node's own services that the Infrastructure addresses may connect
	// to: where the operator's CLI runs on the provider's host (the mini provider), it reaches init, the
	// verification service and the API server from there. Each of them authenticates and encrypts by itself
	// (aTLS, TLS with client certificates).
	OperatorTCPPorts []uint16
	// Local are this node's own ranges inside the protected ones (its pod range), routed by the main table.
	Local []netip.Prefix
	// PlaintextTCPPorts may cross the link without the tunnel because their protocol attests and encrypts by
	// itself and a node needs it before it has a tunnel: the join service. Only connections to this node's
	// own listener on these ports, and this node's own connections to these ports on other nodes.
	PlaintextTCPPorts []uint16
}

// rulePriority is the first of the priorities of the policy rules (before the main table's 32766).
const rulePriority = 5200

// The chains of the mangle table that filter what arrives on and what leaves by the link.
const (
	ingressChain = "CONSTELLATION-MESH"
	egressChain  = "CONSTELLATION-MESH-OUT"
)

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
			// Only this node's own packets (locally generated: iif lo), never what it forwards for a pod.
			rule.IifName = "lo"
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

// filterLink installs the filter chains on the link (see [Routing]): the mangle table's PREROUTING sees
// what arrives for this node and for its pods alike, after conntrack, and its POSTROUTING what leaves.
func (r *Routing) filterLink(listenPort int) error {
	ipt := func(args ...string) error {
		out, err := exec.Command("iptables", append([]string{"-w", "-t", "mangle"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	local := []string{"-m", "addrtype", "--dst-type", "LOCAL"}
	var in, out [][]string
	in = append(in, append([]string{"-p", "udp", "--dport", strconv.Itoa(listenPort)}, local...))
	out = append(out, []string{"-m", "mark", "--mark", strconv.FormatUint(uint64(r.Mark), 10)})
	for _, port := range r.PlaintextTCPPorts {
		p := strconv.Itoa(int(port))
		in = append(in,
			append([]string{"-p", "tcp", "--dport", p, "-m", "conntrack", "--ctdir", "ORIGINAL"}, local...),
			append([]string{"-p", "tcp", "-m", "conntrack", "--ctstate", "ESTABLISHED", "--ctdir", "REPLY", "--ctorigdstport", p}, local...))
		out = append(out,
			[]string{"-p", "tcp", "--dport", p, "-m", "conntrack", "--ctdir", "ORIGINAL", "-m", "addrtype", "--src-type", "LOCAL"},
			[]string{"-p", "tcp", "--sport", p, "-m", "conntrack", "--ctdir", "REPLY", "--ctorigdstport", p, "-m", "addrtype", "--src-type", "LOCAL"})
	}
	for _, infra := range r.Infrastructure {
		in = append(in, []string{"-s", infra.String(), "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "--ctdir", "REPLY"})
		for _, port := range r.OperatorTCPPorts {
			in = append(in, append([]string{"-s", infra.String(), "-p", "tcp", "--dport", strconv.Itoa(int(port)), "-m", "conntrack", "--ctdir", "ORIGINAL"}, local...))
		}
		out = append(out, []string{"-d", infra.String()})
	}
	for i := range in {
		in[i] = append(in[i], "-j", "RETURN")
	}
	for i := range out {
		out[i] = append(out[i], "-j", "RETURN")
	}
	for _, p := range r.Protected {
		in = append(in, []string{"-s", p.String(), "-j", "DROP"})
		out = append(out, []string{"-d", p.String(), "-j", "DROP"})
	}
	for _, c := range []struct {
		chain, hook, dir string
		rules            [][]string
	}{{ingressChain, "PREROUTING", "-i", in}, {egressChain, "POSTROUTING", "-o", out}} {
		if ipt("-N", c.chain) != nil { // exists already: start it over
			if err := ipt("-F", c.chain); err != nil {
				return err
			}
		}
		for _, rule := range c.rules {
			if err := ipt(append([]string{"-A", c.chain}, rule...)...); err != nil {
				return err
			}
		}
		jump := []string{c.hook, c.dir, r.Link, "-j", c.chain}
		if ipt(append([]string{"-C"}, jump...)...) != nil {
			if err := ipt(append([]string{"-I"}, jump...)...); err != nil {
				return err
			}
		}
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
	for _, c := range [][]string{{ingressChain, "PREROUTING", "-i"}, {egressChain, "POSTROUTING", "-o"}} {
		exec.Command("iptables", "-w", "-t", "mangle", "-D", c[1], c[2], r.Link, "-j", c[0]).Run()
		exec.Command("iptables", "-w", "-t", "mangle", "-F", c[0]).Run()
		exec.Command("iptables", "-w", "-t", "mangle", "-X", c[0]).Run()
	}
}
