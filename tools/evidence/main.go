// Command evidence makes a software TPM into a measured, enrolled node and writes genuine evidence from it,
// with the files a verifier needs: the AK CA certificate, the expected measurements and the nonce.
// It is a development tool for trying out `constellation attestation show|verify`.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/tpmtest"
)

func main() {
	out := flag.String("out", "_out/evidence", "directory to write evidence.json, ca.pem, measurements.json, nonce.hex, user-data.hex")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "evidence:", err)
		os.Exit(1)
	}
}

func run(out string) error {
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	ctx := context.Background()
	node, err := tpmtest.NewSWTPMNode(ctx, filepath.Join(out, "node"), vtpm.ECC)
	if err != nil {
		return fmt.Errorf("creating a node with a software TPM: %w", err)
	}
	defer node.Close()
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	userData := []byte("example user data")
	ev, err := node.Issuer.Issue(ctx, nonce, userData)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(node.Policy)
	if err != nil {
		return err
	}
	var policy bytes.Buffer
	if err := json.Indent(&policy, raw, "", "  "); err != nil {
		return err
	}
	files := map[string][]byte{
		"evidence.json":     ev,
		"measurements.json": policy.Bytes(),
		"ca.pem":            pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: node.CA.Certificate().Raw}),
		"nonce.hex":         []byte(hex.EncodeToString(nonce)),
		"user-data.hex":     []byte(hex.EncodeToString(userData)),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(out, name), data, 0o600); err != nil {
			return err
		}
	}
	fmt.Printf("wrote evidence from a swtpm node to %s\n", out)
	return nil
}
