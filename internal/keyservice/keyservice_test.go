package keyservice

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/keyservice/keyservicepb"
	"github.com/constellation-dev/constellation/internal/kms"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

type env struct {
	addr    string
	node    *tpmtest.Node
	v       attestation.Validator
	deriver *kms.Deriver
	audit   *bytes.Buffer
}

// start runs a key service over mutual aTLS; callerPolicy decides which callers it accepts.
func start(t *testing.T, callerPolicy func(*tpmtest.Node) measurements.M, restrict ...func(context.Context, string) (bool, error)) *env {
	t.Helper()
	node, err := tpmtest.NewSimulatorNode(vtpm.ECC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	v, err := node.Validator()
	if err != nil {
		t.Fatal(err)
	}
	callers := v
	if callerPolicy != nil {
		callers, err = vtpm.NewValidator([]*x509.Certificate{node.CA.Certificate()}, callerPolicy(node), nil)
		if err != nil {
			t.Fatal(err)
		}
	}
	ms, err := kms.GenerateMasterSecret()
	if err != nil {
		t.Fatal(err)
	}
	d, err := kms.NewDeriver(ms)
	if err != nil {
		t.Fatal(err)
	}
	audit := &bytes.Buffer{}
	ks := New(d, slog.New(slog.NewTextHandler(audit, nil)))
	for _, r := range restrict {
		ks.RestrictTo(r)
	}
	srv, err := NewGRPCServer(ks, node.Issuer, []attestation.Validator{callers})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return &env{addr: ln.Addr().String(), node: node, v: v, deriver: d, audit: audit}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func TestGetDataKey(t *testing.T) {
	e := start(t, nil)
	c, err := NewClient(e.addr, e.node.Issuer, []attestation.Validator{e.v})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id := "disk-key/0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11"
	key, err := c.GetDiskKey(ctx(t), "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11", "node-0", kms.DiskKeySize)
	if err != nil {
		t.Fatalf("GetDiskKey: %v", err)
	}
	var pr peer.Peer
	if _, err := c.api.GetDataKey(ctx(t), &keyservicepb.GetDataKeyRequest{DataKeyId: id, Length: kms.DiskKeySize, Node: "node-0"}, grpc.Peer(&pr)); err != nil {
		t.Fatal(err)
	}
	if info, ok := pr.AuthInfo.(credentials.TLSInfo); !ok || info.State.CurveID != tls.X25519MLKEM768 {
		t.Fatalf("the key service's channel's key exchange is not the post-quantum hybrid: %+v", pr.AuthInfo)
	}
	want, _ := e.deriver.DiskKey("0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11")
	if !bytes.Equal(key, want) {
		t.Fatal("key service returned another key than the derivation")
	}
	again, err := c.GetDiskKey(ctx(t), "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11", "node-0", kms.DiskKeySize)
	if err != nil || !bytes.Equal(again, key) {
		t.Fatalf("second request: %v, same key %v", err, bytes.Equal(again, key))
	}
	// The disk is bound to node-0 now: nobody else gets its key.
	if _, err := c.GetDiskKey(ctx(t), "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11", "node-1", kms.DiskKeySize); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the disk key of node-0's disk for node-1: %v, want PermissionDenied", err)
	}

	for name, tc := range map[string]struct {
		id     string
		length uint32
		want   string
	}{
		"cluster-id secret": {"cluster-id/x", 32, "cannot be requested"},
		"CA seed":           {"ca-seed/kubernetes", 32, "cannot be requested"},
		"no purpose":        {"0b6c3a2e", 32, "<purpose>/<identifier>"},
		"bad identifier":    {"data-key/../etc", 32, "invalid"},
		"empty identifier":  {"data-key/", 32, "invalid"},
		"huge identifier":   {"data-key/" + strings.Repeat("a", 10000), 32, "invalid"},
		"short key":         {"data-key/x", 8, "out of range"},
		"long key":          {"data-key/x", 1 << 31, "out of range"},
		"disk for nobody":   {id, 32, "named nodes only"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := c.GetDataKey(ctx(t), tc.id, tc.length)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("GetDataKey(%.40q, %d) = %v, want InvalidArgument containing %q", tc.id, tc.length, err, tc.want)
			}
		})
	}

	log := e.audit.String()
	if !strings.Contains(log, `msg="data key issued" caller=node-0@127.0.0.1:`) || !strings.Contains(log, "keyID="+id) {
		t.Errorf("audit log lacks the issued key's caller and ID:\n%s", log)
	}
	if !strings.Contains(log, `msg="data key refused"`) {
		t.Errorf("audit log lacks refusals:\n%s", log)
	}
	for _, enc := range []string{hex.EncodeToString(key), base64.StdEncoding.EncodeToString(key), string(key)} {
		if strings.Contains(log, enc) {
			t.Fatal("audit log contains the key")
		}
	}
}

func TestRefusesUnattestedCallers(t *testing.T) {
	// The key service accepts only callers whose node image is another one.
	e := start(t, func(n *tpmtest.Node) measurements.M {
		return measurements.M{
			measurements.PCRNodeImage:  {Expected: measurements.Digest{0xcd}},
			measurements.PCRBootParams: n.Policy[measurements.PCRBootParams],
		}
	})
	c, err := NewClient(e.addr, e.node.Issuer, []attestation.Validator{e.v})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.GetDataKey(ctx(t), "data-key/x", 32); err == nil {
		t.Fatal("a caller with the wrong measurements got a key")
	}
	if strings.Contains(e.audit.String(), "data key issued") {
		t.Fatal("audit log says a key was issued")
	}
	if _, err := NewClient(e.addr, nil, []attestation.Validator{e.v}); err == nil {
		t.Fatal("client without an issuer created")
	}
}

func TestHandlerFailsClosedWithoutAttestation(t *testing.T) {
	ms, _ := kms.GenerateMasterSecret()
	d, _ := kms.NewDeriver(ms)
	var audit bytes.Buffer
	s := New(d, slog.New(slog.NewTextHandler(&audit, nil)))
	_, err := s.GetDataKey(context.Background(), &keyservicepb.GetDataKeyRequest{DataKeyId: "data-key/x", Length: 32})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("GetDataKey without an attested peer = %v, want Unauthenticated", err)
	}
	if !strings.Contains(audit.String(), "caller not attested") {
		t.Fatalf("refusal not audited: %s", audit.String())
	}
	if _, err := NewGRPCServer(s, nil, nil); err == nil {
		t.Fatal("key service server without attestation created")
	}
}

// A key service restricted to some callers refuses every other attested caller, whatever it asks for.
func TestRestrictTo(t *testing.T) {
	var asked []string
	allowed := false
	e := start(t, nil, func(_ context.Context, name string) (bool, error) {
		asked = append(asked, name)
		return allowed, nil
	})
	c, err := NewClient(e.addr, e.node.Issuer, []attestation.Validator{e.v})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id := "disk-key/0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11"
	if _, err := c.GetDataKey(ctx(t), id, 32); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `node "node-0" may not get keys`) {
		t.Fatalf("GetDataKey by a caller not allowed = %v", err)
	}
	if !strings.Contains(e.audit.String(), "caller not allowed") {
		t.Fatalf("audit log lacks the refusal:\n%s", e.audit.String())
	}
	allowed = true
	if _, err := c.GetDiskKey(ctx(t), "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11", "node-1", 32); err != nil {
		t.Fatalf("GetDataKey by an allowed caller: %v", err)
	}
	if len(asked) != 2 || asked[0] != "node-0" {
		t.Fatalf("the restriction was asked about %v, want the attested name node-0 twice", asked)
	}
}
