package apiproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// MeshDialer returns a DialRemote that connects only through the network interface iface, the node's
// WireGuard interface: the socket is bound to it (SO_BINDTODEVICE) before it connects, so whatever the routing
// tables say, its packets leave by the tunnel or not at all, and WireGuard hands them only to the peer whose
// key owns the destination address. An address no peer owns (a removed node has none; an address of the host)
// is not reached.
func MeshDialer(iface string) func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, iface)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("binding the connection to the WireGuard interface %s: %w", iface, serr)
		}
		return nil
	}}
	return func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
		return d.DialContext(ctx, "tcp4", addr.String())
	}
}
