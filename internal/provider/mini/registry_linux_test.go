package mini

import (
	"log/slog"
	"net"
	"strings"
	"testing"
)

// A registry port that is taken fails the cluster's start with an error that says how to choose another.
func TestRegistryPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	p := &Provider{Dir: t.TempDir(), Log: slog.New(slog.DiscardHandler)}
	stop, err := p.startRegistry(port)
	defer stop()
	if err == nil || !strings.Contains(err.Error(), "provider.mini.registryPort") || !strings.Contains(err.Error(), "--registry-port") {
		t.Fatalf("startRegistry on a taken port: %v", err)
	}
	ln.Close()
	stop, err = p.startRegistry(port)
	if err != nil {
		t.Fatal(err)
	}
	stop()
}
