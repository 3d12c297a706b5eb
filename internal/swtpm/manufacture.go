// Package swtpm manufactures and runs software TPM 2.0 devices (swtpm) whose endorsement-key (EK)
// certificates are signed by a local CA, for tests, benchmarks and local clusters that play the cloud.
//
// A CA (NewCA) is an ECDSA P-256 key and self-signed certificate in a directory. Manufacture creates a
// TPM state directory with swtpm_setup, which has swtpm_localca sign the EK certificates with the CA
// key and stores them in the TPM's NV memory (TCG EK Credential Profile indices):
//
//	0x01c00002  RSA-2048 EK certificate  (EK persisted at 0x81010001, template L-1)
//	0x01c0000a  ECC P-256 EK certificate (EK persisted at 0x81010002, template L-2)
//	0x01c00016  ECC P-384 EK certificate (EK persisted at 0x81010016, template H-3)
//	0x01c08000  platform certificate
//
// swtpm_setup 0.7 creates only the RSA-2048 and the P-384 EK; Manufacture adds the P-256 EK of the
// default template (client.EndorsementKeyECC) and its certificate, signed by swtpm_localca as well.
// All certificate indices are write-locked (TPMA_NV_WRITEDEFINE, swtpm_setup --lock-nvram).
// The EK certificates carry a critical subjectAltName that holds only a directoryName (TPM
// manufacturer, model and version), which crypto/x509 parses but lists in UnhandledCriticalExtensions;
// verify them with CheckSignatureFrom or clear that list before x509.Certificate.Verify.
//
// Start runs swtpm on such a state directory; Close stops it cleanly. StartForMachine runs it as the TPM of a
// QEMU virtual machine instead (control socket only; the machine's firmware starts the TPM). swtpm keeps its state across
// restarts and counts a stop without TPM2_Shutdown as a dictionary-attack event, so always Close a TPM.
//
// The package needs the swtpm binaries (Debian packages swtpm and swtpm-tools) in PATH. Manufacture
// writes only to the state directory, the CA directory (swtpm_localca keeps its serial counter
// certserial and a lock file there) and a private temporary directory that holds the configuration
// of swtpm_setup and swtpm_localca (nothing is read from /etc/swtpm* or ~/.config). The one exception
// is a pid file /tmp/.swtpm_setup.pidfile.XXXXXX, whose path swtpm_setup 0.7 hard-codes and which it
// removes again.
package swtpm

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/constellation-dev/constellation/internal/cadir"
)

// NV attributes swtpm_setup uses for EK certificate indices.
const ekCertNVAttrs = tpm2.AttrPlatformCreate | tpm2.AttrAuthRead | tpm2.AttrOwnerRead |
	tpm2.AttrPPRead | tpm2.AttrPPWrite | tpm2.AttrNoDA | tpm2.AttrWriteDefine

// Manufacture initialises a new TPM state in stateDir (created with mode 0700 if missing) with
// RSA and ECC EKs and EK certificates signed by ca. It refuses to overwrite an existing state.
// If it fails, it removes the state it created.
func Manufacture(ctx context.Context, stateDir string, ca *CA) (err error) {
	if ca == nil {
		return errors.New("manufacturing TPM: no CA")
	}
	stateDir, err = filepath.Abs(stateDir)
	if err != nil {
		return fmt.Errorf("manufacturing TPM: %w", err)
	}
	for _, p := range []string{stateDir, ca.dir} {
		if err := checkOptionPath(p); err != nil {
			return fmt.Errorf("manufacturing TPM: %w", err)
		}
	}
	if _, err := os.Stat(filepath.Join(stateDir, stateFile)); err == nil {
		return fmt.Errorf("manufacturing TPM: %s already holds a TPM state; refusing to overwrite it", stateDir)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("manufacturing TPM: %w", err)
	}
	_, statErr := os.Stat(stateDir)
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("manufacturing TPM: creating state directory: %w", err)
	}
	defer func() {
		if err != nil { // leave no half-manufactured state behind
			for _, f := range []string{stateFile, ".lock", sockFile, ctrlFile} {
				_ = os.Remove(filepath.Join(stateDir, f))
			}
			if errors.Is(statErr, fs.ErrNotExist) {
				_ = os.Remove(stateDir)
			}
		}
	}()

	tmp, err := os.MkdirTemp("", "swtpm-manufacture-")
	if err != nil {
		return fmt.Errorf("manufacturing TPM: %w", err)
	}
	defer os.RemoveAll(tmp)
	localca, err := exec.LookPath("swtpm_localca")
	if err != nil {
		return fmt.Errorf("manufacturing TPM: %w", err)
	}
	caConf, caOpts, setupConf := filepath.Join(tmp, "swtpm-localca.conf"),
		filepath.Join(tmp, "swtpm-localca.options"), filepath.Join(tmp, "swtpm_setup.conf")
	files := map[string]string{
		caConf: "statedir = " + ca.dir + "\n" +
			"signingkey = " + filepath.Join(ca.dir, cadir.KeyFile) + "\n" +
			"issuercert = " + filepath.Join(ca.dir, cadir.CertFile) + "\n" +
			"certserial = " + filepath.Join(ca.dir, "certserial") + "\n",
		caOpts: "--platform-manufacturer constellation\n--platform-version 1.0\n--platform-model swtpm\n",
		setupConf: "create_certs_tool = " + localca + "\n" +
			"create_certs_tool_config = " + caConf + "\n" +
			"create_certs_tool_options = " + caOpts + "\n" +
			"active_pcr_banks = sha256\n",
	}
	for name, content := range files {
		if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
			return fmt.Errorf("manufacturing TPM: writing config: %w", err)
		}
	}
	// --config, --configfile and --optsfile keep swtpm_setup and swtpm_localca away from
	// /etc and ~/.config; TMPDIR moves swtpm_setup's scratch certificate directory into tmp.
	env := append(os.Environ(), "TMPDIR="+tmp, "XDG_CONFIG_HOME="+tmp)
	if err := run(ctx, env, "swtpm_setup", "--tpm2", "--tpmstate", stateDir, "--config", setupConf,
		"--create-ek-cert", "--create-platform-cert", "--lock-nvram", "--pcr-banks", "sha256"); err != nil {
		return fmt.Errorf("manufacturing TPM: %w", err)
	}
	if err := addECCP256EK(ctx, stateDir, tmp, env, localca, "--configfile", caConf, "--optsfile", caOpts); err != nil {
		return fmt.Errorf("manufacturing TPM: adding ECC P-256 EK: %w", err)
	}
	return nil
}

// addECCP256EK creates and persists the EK of the default ECC template, has swtpm_localca
// certify it and stores the certificate at client.EKCertNVIndexECC.
func addECCP256EK(ctx context.Context, stateDir, tmp string, env []string, localca string, caArgs ...string) (err error) {
	t, err := Start(ctx, stateDir)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, t.Close()) }()
	var info struct {
		TPMSpecification struct {
			Family   string
			Level    int
			Revision int
		}
		TPMAttributes struct{ Manufacturer, Version, Model string }
	}
	infoJSON, err := t.info(infoTPMSpecification | infoTPMAttributes)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(infoJSON, &info); err != nil {
		return fmt.Errorf("parsing swtpm info %q: %w", infoJSON, err)
	}

	rw, err := t.Dial()
	if err != nil {
		return err
	}
	defer rw.Close()
	ek, err := client.EndorsementKeyECC(rw)
	if err != nil {
		return fmt.Errorf("creating EK: %w", err)
	}
	defer ek.Close()
	pub, ok := ek.PublicKey().(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("EK public key is %T", ek.PublicKey())
	}
	point, err := pub.Bytes() // 0x04 || X || Y
	if err != nil {
		return err
	}
	x, y := point[1:33], point[33:]

	certDir := filepath.Join(tmp, "ecc-p256")
	if err := os.Mkdir(certDir, 0o700); err != nil {
		return err
	}
	spec, attrs := info.TPMSpecification, info.TPMAttributes
	args := append([]string{"--type", "ek", "--tpm2",
		"--ek", "x=" + hex.EncodeToString(x) + ",y=" + hex.EncodeToString(y) + ",id=secp256r1",
		"--dir", certDir,
		"--tpm-spec-family", spec.Family,
		"--tpm-spec-level", strconv.Itoa(spec.Level),
		"--tpm-spec-revision", strconv.Itoa(spec.Revision),
		"--tpm-manufacturer", attrs.Manufacturer,
		"--tpm-model", attrs.Model,
		"--tpm-version", attrs.Version,
	}, caArgs...)
	if err := run(ctx, env, localca, args...); err != nil {
		return err
	}
	der, err := os.ReadFile(filepath.Join(certDir, "ek.cert"))
	if err != nil {
		return fmt.Errorf("reading EK certificate: %w", err)
	}
	if cert, err := x509.ParseCertificate(der); err != nil {
		return fmt.Errorf("parsing EK certificate: %w", err)
	} else if !pub.Equal(cert.PublicKey) {
		return errors.New("EK certificate does not certify the EK")
	}

	idx := tpmutil.Handle(client.EKCertNVIndexECC)
	nvPub := tpm2.NVPublic{NVIndex: idx, NameAlg: tpm2.AlgSHA256, Attributes: ekCertNVAttrs, DataSize: uint16(len(der))}
	platformAuth := tpm2.AuthCommand{Session: tpm2.HandlePasswordSession, Attributes: tpm2.AttrContinueSession}
	if err := tpm2.NVDefineSpaceEx(rw, tpm2.HandlePlatform, "", nvPub, platformAuth); err != nil {
		return fmt.Errorf("defining NV index 0x%x: %w", idx, err)
	}
	for off := 0; off < len(der); off += 1024 {
		chunk := der[off:min(off+1024, len(der))]
		if err := tpm2.NVWrite(rw, tpm2.HandlePlatform, idx, "", chunk, uint16(off)); err != nil {
			return fmt.Errorf("writing NV index 0x%x: %w", idx, err)
		}
	}
	if err := tpm2.NVWriteLock(rw, tpm2.HandlePlatform, idx, ""); err != nil {
		return fmt.Errorf("locking NV index 0x%x: %w", idx, err)
	}
	return nil
}

// run executes a tool, killing its whole process group if ctx ends; errors include its output.
func run(ctx context.Context, env []string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	configureCmd(cmd, syscall.SIGKILL)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("running %s: %w: %s", filepath.Base(name), err, strings.TrimSpace(string(out)))
	}
	return nil
}
