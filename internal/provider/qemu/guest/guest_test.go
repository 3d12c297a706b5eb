package guest

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/constellation-dev/constellation/internal/attestation"
)

func TestAddressFromMAC(t *testing.T) {
	addr := netip.MustParseAddr("10.219.0.10")
	mac, err := MACForAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	if mac.String() != "52:54:0a:db:00:0a" {
		t.Errorf("MAC of %s = %s", addr, mac)
	}
	if got, err := AddrFromMAC(mac); err != nil || got != addr {
		t.Errorf("AddrFromMAC(%s) = %s, %v; want %s", mac, got, err, addr)
	}
	for _, bad := range []string{"52:54:0a:db:00:01", "52:54:0a:db:00:00", "52:54:0a:db:00:ff", "52:54:0a:da:00:0a", "52:54:7f:00:00:01", "02:54:0a:db:00:0a", "52:55:0a:db:00:0a"} {
		mac, _ := net.ParseMAC(bad)
		if a, err := AddrFromMAC(mac); err == nil {
			t.Errorf("AddrFromMAC(%s) = %s, want an error", bad, a)
		}
	}
	for _, bad := range []string{"10.219.0.1", "10.219.1.5", "10.217.0.10", "::1"} {
		if _, err := MACForAddr(netip.MustParseAddr(bad)); err == nil {
			t.Errorf("MACForAddr(%s): no error", bad)
		}
	}
}

func TestClient(t *testing.T) {
	c := NewClient(MetadataURL)
	if c.Name() != ProviderName || c.Endpoint() != "http://10.219.0.1:8080" || c.Variant().Name != attestation.QEMUVTPM.Name {
		t.Errorf("client: %s at %s issuing %s", c.Name(), c.Endpoint(), c.Variant())
	}
	if pods, services := c.Networks(); pods.Overlaps(services) || pods.Overlaps(NodeNetwork) {
		t.Errorf("networks overlap: pods %s, services %s, nodes %s", pods, services, NodeNetwork)
	}
	// The event log is the guest's own file, never one the metadata service serves.
	dir := t.TempDir()
	c.EventLogFile = filepath.Join(dir, "binary_bios_measurements")
	if _, err := c.EventLog(context.Background()); err == nil || !strings.Contains(err.Error(), "securityfs") {
		t.Errorf("EventLog without a log: %v", err)
	}
	os.WriteFile(c.EventLogFile, nil, 0o600)
	if _, err := c.EventLog(context.Background()); err == nil {
		t.Error("EventLog of an empty log: no error")
	}
	os.WriteFile(c.EventLogFile, []byte("log"), 0o600)
	if got, err := c.EventLog(context.Background()); err != nil || !bytes.Equal(got, []byte("log")) {
		t.Errorf("EventLog = %q, %v", got, err)
	}
}

// The MAC address is the host's: whatever it is, AddrFromMAC returns an address of the node network that
// maps back to the same MAC, or an error.
func FuzzAddrFromMAC(f *testing.F) {
	f.Add([]byte{0x52, 0x54, 10, 219, 0, 10})
	f.Add([]byte{0x52, 0x54, 10, 219, 0, 1})
	f.Add([]byte{0x52, 0x54, 10, 219, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		addr, err := AddrFromMAC(net.HardwareAddr(raw))
		if err != nil {
			return
		}
		if !NodeNetwork.Contains(addr) || addr == Gateway {
			t.Fatalf("AddrFromMAC(%x) = %s", raw, addr)
		}
		mac, err := MACForAddr(addr)
		if err != nil || !bytes.Equal(mac, raw) {
			t.Fatalf("MACForAddr(%s) = %s, %v; want %x", addr, mac, err, raw)
		}
	})
}
