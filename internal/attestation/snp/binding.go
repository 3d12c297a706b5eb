package snp

import (
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"fmt"

	"github.com/constellation-dev/constellation/internal/attestation"
)

// akBindingLabel separates the attestation-key binding from every other use of REPORT_DATA.
const akBindingLabel = "constellation snp ak binding v1\x00"

// ReportDataForAttestationKey returns the REPORT_DATA that binds a vTPM attestation key to a report:
//
//	SHA-512("constellation snp ak binding v1\x00" || DER SubjectPublicKeyInfo of the key)
//
// SHA-512 fills the 64 bytes of REPORT_DATA exactly, so there is no padding to get wrong, and the label
// keeps the value apart from [ReportDataForNonce]. With this binding the report proves which TPM key belongs
// to the confidential VM; the freshness of the evidence comes from the TPM quote, whose qualifying data
// binds the verifier's nonce. A report bound this way can be reused with fresh quotes of the same key.
func ReportDataForAttestationKey(ak crypto.PublicKey) ([ReportDataSize]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(ak)
	if err != nil {
		return [ReportDataSize]byte{}, fmt.Errorf("encoding attestation key: %w", err)
	}
	h := sha512.New()
	h.Write([]byte(akBindingLabel))
	h.Write(der)
	var out [ReportDataSize]byte
	h.Sum(out[:0])
	return out, nil
}

// ReportDataForNonce returns the REPORT_DATA that binds a verifier's nonce and the caller's user data
// directly, for variants without a vTPM: attestation.BindingDigest(variant, nonce, userData) (32 bytes,
// SHA-256) in the first half and 32 zero bytes in the second half. The verifier compares all 64 bytes, so
// the zero half is checked too.
func ReportDataForNonce(variant attestation.Variant, nonce, userData []byte) [ReportDataSize]byte {
	var out [ReportDataSize]byte
	d := attestation.BindingDigest(variant, nonce, userData)
	copy(out[:], d[:])
	return out
}

// clusterBindingLabel separates the cluster binding in the second half of REPORT_DATA from every other use.
const clusterBindingLabel = "constellation snp cluster id v1\x00"

// ClusterIDSize is the size of a cluster ID that a node of a variant without a vTPM binds
// ([ReportDataForMember]).
const ClusterIDSize = 32

// ReportDataForMember returns the REPORT_DATA of a node that belongs to the cluster clusterID, for variants
// without a vTPM: the first half as [ReportDataForNonce], the second half
//
//	SHA-256("constellation snp cluster id v1\x00" || clusterID)
//
// A nil clusterID gives [ReportDataForNonce]: a fresh node's second half is zero. The second half plays the
// role of the cluster-ID PCR (PCR 15) of the vTPM variants, which SEV-SNP guests lack: a node sets it once,
// when it is initialised or joins ([Issuer.JoinCluster]), and every report it issues afterwards carries it.
// The host cannot change what a guest asks the firmware to sign; the node's measured code does not clear it.
func ReportDataForMember(variant attestation.Variant, nonce, userData, clusterID []byte) [ReportDataSize]byte {
	out := ReportDataForNonce(variant, nonce, userData)
	if clusterID != nil {
		h := sha256.New()
		h.Write([]byte(clusterBindingLabel))
		h.Write(clusterID)
		h.Sum(out[ReportDataSize/2 : ReportDataSize/2])
	}
	return out
}

// nodeNameLabel separates the node-name binding of HOST_DATA from every other use.
const nodeNameLabel = "constellation snp node name v1\x00"

// HostDataForNode returns the HOST_DATA with which a provider launches the qemu-sev-snp guest of node name:
//
//	SHA-256("constellation snp node name v1\x00" || name)
//
// HOST_DATA is set by the host when it launches the guest and signed in every report; the guest cannot change
// it. It names the node as the certificate of an attestation key names a vTPM node: the provider, which
// creates the nodes, says which is which; a node launched for one name cannot claim another.
func HostDataForNode(name string) [HostDataSize]byte {
	h := sha256.New()
	h.Write([]byte(nodeNameLabel))
	h.Write([]byte(name))
	var out [HostDataSize]byte
	h.Sum(out[:0])
	return out
}

// CheckReportData compares the REPORT_DATA of a report with want in constant time. It says nothing about
// who signed the report: pass the Report of a [VerifiedReport], or check the report's signature afterwards.
func CheckReportData(r *Report, want [ReportDataSize]byte) error {
	if r == nil {
		return fmt.Errorf("%w: no report", ErrPolicy)
	}
	if subtle.ConstantTimeCompare(r.ReportData[:], want[:]) != 1 {
		return fmt.Errorf("%w: %w: the report is not bound to this request (stale, replayed or made for another nonce or key)", ErrPolicy, ErrReportData)
	}
	return nil
}
