// Command roguenode is a node's first process for the end-to-end test of a malicious join: booted from an
// image that is not the cluster's, it does what a joining node does with its genuine TPM (the provider
// certifies its attestation key and measured its boot), but trusts any join service, so that it presents its
// evidence. The join service must refuse it. It retries as a node would and logs each answer.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"

	"github.com/constellation-dev/constellation/internal/atls"
	"github.com/constellation-dev/constellation/internal/attestation/akca"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
	"github.com/constellation-dev/constellation/internal/joinservice/joinpb"
	"github.com/constellation-dev/constellation/internal/provider/mini/metadata"
	"github.com/constellation-dev/constellation/internal/wgmesh"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("component", "roguenode")
	log.Error("rogue node stopped", "error", run(context.Background(), log))
	os.Exit(1)
}

// run tries to join until it fails; it does not return otherwise.
func run(ctx context.Context, log *slog.Logger) error {
	md := metadata.NewClient(os.Getenv("CONSTELLATION_METADATA"))
	var self metadata.Instance
	for {
		var err error
		if self, err = md.Self(ctx); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	tpm, err := net.Dial("unix", os.Getenv("CONSTELLATION_TPM"))
	if err != nil {
		return err
	}
	akCert, err := akca.Enroll(ctx, tpm, self.Name, vtpm.ECC, md)
	if err != nil {
		return err
	}
	bootLog, err := md.EventLog(ctx)
	if err != nil {
		return err
	}
	issuer, err := vtpm.NewIssuer(tpm, vtpm.ECC, akCert, func() ([]byte, error) { return bootLog, nil })
	if err != nil {
		return err
	}
	creds, err := atls.NewCredentials(issuer, nil) // any join service will do
	if err != nil {
		return err
	}
	_, meshKey, err := wgmesh.GenerateKey()
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:" + self.Name, Organization: []string{"system:nodes"}}}, key)
	if err != nil {
		return err
	}
	for {
		list, err := md.Instances(ctx)
		if err != nil {
			return err
		}
		for _, inst := range list {
			if inst.Name != "control-plane-0" {
				continue
			}
			conn, err := grpc.NewClient(net.JoinHostPort(inst.IP, strconv.Itoa(joinpb.Port)), grpc.WithTransportCredentials(creds))
			if err != nil {
				return err
			}
			callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			resp, err := joinpb.NewJoinClient(conn).Join(callCtx, &joinpb.JoinRequest{WireguardPublicKey: meshKey[:], KubeletCsr: csr})
			cancel()
			conn.Close()
			if err != nil {
				log.Info("join refused", "error", err)
			} else {
				log.Error("ADMITTED: the join service admitted a node from another image", "token", resp.GetToken() != "", "diskKey", len(resp.GetDiskKey()))
			}
		}
		time.Sleep(5 * time.Second)
	}
}
