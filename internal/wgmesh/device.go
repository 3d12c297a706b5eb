package wgmesh

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Backend is what runs a mesh's WireGuard device.
type Backend string

const (
	// BackendAuto uses the kernel's WireGuard where the kernel has it, the userspace implementation otherwise.
	BackendAuto Backend = ""
	// BackendKernel is the kernel's WireGuard: a link of type "wireguard", configured over generic netlink.
	BackendKernel Backend = "kernel"
	// BackendUserspace is golang.zx2c4.com/wireguard driving a TUN device, in this process.
	BackendUserspace Backend = "userspace"
)

// wgDevice is a WireGuard device as Mesh uses it: everything above it (peers, routes, policy rules, filters)
// is the same for every backend.
type wgDevice interface {
	// configure applies cfg (the wgctrl model of wg(8)'s set).
	configure(cfg wgtypes.Config) error
	// state reads the peers from the running device.
	state() ([]PeerStatus, error)
	close()
}

// newDevice creates the interface name with the backend b (BackendAuto: the kernel's where it has WireGuard)
// and returns it, its link and the backend that runs it.
func newDevice(b Backend, name string, mtu int) (wgDevice, netlink.Link, Backend, error) {
	if b == BackendAuto || b == BackendKernel {
		d, link, err := newKernelDevice(name, mtu)
		switch {
		case err == nil:
			return d, link, BackendKernel, nil
		case b == BackendKernel || !errors.Is(err, errNoKernelWireGuard):
			return nil, nil, "", err
		}
	}
	if b != BackendAuto && b != BackendUserspace {
		return nil, nil, "", fmt.Errorf("unknown WireGuard backend %q (want %q or %q)", b, BackendKernel, BackendUserspace)
	}
	d, link, err := newUserspaceDevice(name, mtu)
	return d, link, BackendUserspace, err
}

// errNoKernelWireGuard says that the kernel cannot create WireGuard links.
var errNoKernelWireGuard = errors.New("the kernel has no WireGuard (no link type \"wireguard\")")

// kernelDevice is the kernel's WireGuard.
type kernelDevice struct {
	name   string
	link   netlink.Link
	client *wgctrl.Client
}

func newKernelDevice(name string, mtu int) (*kernelDevice, netlink.Link, error) {
	// A WireGuard link of that name left by an earlier run of this node's agent goes: the new one starts
	// without peers. Any other interface of that name is not ours to remove.
	if old, err := netlink.LinkByName(name); err == nil {
		if old.Type() != "wireguard" {
			return nil, nil, fmt.Errorf("creating the WireGuard link %s: an interface of type %s has that name", name, old.Type())
		}
		if err := netlink.LinkDel(old); err != nil {
			return nil, nil, fmt.Errorf("removing the earlier WireGuard link %s: %w", name, err)
		}
	}
	err := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}})
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EAFNOSUPPORT) {
		return nil, nil, fmt.Errorf("creating %s: %w: %v", name, errNoKernelWireGuard, err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("creating the WireGuard link %s: %w", name, err)
	}
	d := &kernelDevice{name: name}
	if d.link, err = netlink.LinkByName(name); err != nil {
		d.close()
		return nil, nil, fmt.Errorf("finding the new link %s: %w", name, err)
	}
	if d.client, err = wgctrl.New(); err != nil {
		d.close()
		return nil, nil, fmt.Errorf("opening the kernel's WireGuard configuration interface: %w", err)
	}
	return d, d.link, nil
}

func (d *kernelDevice) configure(cfg wgtypes.Config) error {
	return d.client.ConfigureDevice(d.name, cfg)
}

func (d *kernelDevice) state() ([]PeerStatus, error) {
	dev, err := d.client.Device(d.name)
	if err != nil {
		return nil, err
	}
	var out []PeerStatus
	for _, p := range dev.Peers {
		out = append(out, PeerStatus{PublicKey: Key(p.PublicKey), HasPresharedKey: p.PresharedKey != wgtypes.Key{}, LastHandshake: p.LastHandshakeTime})
	}
	return out, nil
}

func (d *kernelDevice) close() {
	if d.client != nil {
		d.client.Close()
	}
	if d.link != nil {
		netlink.LinkDel(d.link)
	} else if l, err := netlink.LinkByName(d.name); err == nil && l.Type() == "wireguard" {
		netlink.LinkDel(l)
	}
}

// userspaceDevice is golang.zx2c4.com/wireguard on a TUN device.
type userspaceDevice struct {
	dev *device.Device
}

func newUserspaceDevice(name string, mtu int) (*userspaceDevice, netlink.Link, error) {
	t, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, nil, fmt.Errorf("creating %s: %w (is /dev/net/tun available?)", name, err)
	}
	d := &userspaceDevice{dev: device.NewDevice(t, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))}
	if err := d.dev.Up(); err != nil {
		d.close()
		return nil, nil, fmt.Errorf("bringing %s up: %w", name, err)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		d.close()
		return nil, nil, fmt.Errorf("finding %s: %w", name, err)
	}
	return d, link, nil
}

func (d *userspaceDevice) configure(cfg wgtypes.Config) error { return d.dev.IpcSet(uapi(cfg)) }

// uapi writes cfg in the userspace implementation's configuration protocol (the "set" operation of
// https://www.wireguard.com/xplatform/).
func uapi(cfg wgtypes.Config) string {
	var b strings.Builder
	if cfg.PrivateKey != nil {
		fmt.Fprintf(&b, "private_key=%s\n", hex.EncodeToString(cfg.PrivateKey[:]))
	}
	if cfg.ListenPort != nil {
		fmt.Fprintf(&b, "listen_port=%d\n", *cfg.ListenPort)
	}
	if cfg.FirewallMark != nil {
		fmt.Fprintf(&b, "fwmark=%d\n", *cfg.FirewallMark)
	}
	if cfg.ReplacePeers {
		b.WriteString("replace_peers=true\n")
	}
	for _, p := range cfg.Peers {
		fmt.Fprintf(&b, "public_key=%s\n", hex.EncodeToString(p.PublicKey[:]))
		if p.Remove {
			b.WriteString("remove=true\n")
			continue
		}
		if p.PresharedKey != nil {
			fmt.Fprintf(&b, "preshared_key=%s\n", hex.EncodeToString(p.PresharedKey[:]))
		}
		if p.Endpoint != nil {
			fmt.Fprintf(&b, "endpoint=%s\n", p.Endpoint)
		}
		if p.ReplaceAllowedIPs {
			b.WriteString("replace_allowed_ips=true\n")
		}
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a.String())
		}
	}
	return b.String()
}

func (d *userspaceDevice) state() ([]PeerStatus, error) {
	raw, err := d.dev.IpcGet()
	if err != nil {
		return nil, err
	}
	var out []PeerStatus
	for _, line := range strings.Split(raw, "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "public_key":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != len(Key{}) {
				return nil, errors.New("the device's state has a malformed public key")
			}
			out = append(out, PeerStatus{PublicKey: Key(b)})
		case "preshared_key":
			if len(out) > 0 && strings.Trim(v, "0") != "" {
				out[len(out)-1].HasPresharedKey = true
			}
		case "last_handshake_time_sec", "last_handshake_time_nsec":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || len(out) == 0 {
				return nil, fmt.Errorf("the device's state has a malformed %s %q", k, v)
			}
			// Seconds come first, then nanoseconds; both zero while the peer has had no handshake.
			p := &out[len(out)-1]
			if k == "last_handshake_time_sec" && n != 0 {
				p.LastHandshake = time.Unix(n, 0)
			} else if k == "last_handshake_time_nsec" && !p.LastHandshake.IsZero() {
				p.LastHandshake = time.Unix(p.LastHandshake.Unix(), n)
			}
		}
	}
	return out, nil
}

func (d *userspaceDevice) close() { d.dev.Close() }
