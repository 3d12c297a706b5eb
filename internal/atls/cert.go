package atls

import (
	"crypto/ed25519"
	"encoding/asn1"
	"errors"
	"math/big"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Object identifiers of the certificate fields written by createCertificate.
var (
	oidEd25519          = asn1.ObjectIdentifier{1, 3, 101, 112}
	oidCommonName       = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidServerAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidClientAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
	certificateSubject  = "constellation aTLS"
	keyUsageDigitalSign = []byte{0x80} // BIT STRING: bit 0, digitalSignature
)

// extension is a certificate extension written by createCertificate.
type extension struct {
	id    asn1.ObjectIdentifier
	value []byte
}

// createCertificate writes a self-signed X.509 v3 certificate for an Ed25519 key: subject and issuer
// "constellation aTLS", key usage digitalSignature (critical), extended key usage server and client
// authentication, and the extra extensions. It does what x509.CreateCertificate does for this one shape of
// certificate, without re-verifying its own signature (which, for the evidence-sized certificates of aTLS,
// costs more than twice the signature itself). Tests parse its output with crypto/x509.
func createCertificate(key ed25519.PrivateKey, serial *big.Int, notBefore, notAfter time.Time, extra []extension) ([]byte, error) {
	if serial.Sign() <= 0 {
		return nil, errors.New("certificate serial number must be positive")
	}
	pub := key.Public().(ed25519.PublicKey)
	algorithm := func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidEd25519) })
	}
	name := func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(oidCommonName)
					b.AddASN1(cbasn1.UTF8String, func(b *cryptobyte.Builder) { b.AddBytes([]byte(certificateSubject)) })
				})
			})
		})
	}
	ext := func(b *cryptobyte.Builder, id asn1.ObjectIdentifier, critical bool, value func(*cryptobyte.Builder)) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(id)
			if critical {
				b.AddASN1Boolean(true)
			}
			b.AddASN1(cbasn1.OCTET_STRING, value)
		})
	}
	var tbs cryptobyte.Builder
	tbs.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddASN1Int64(2) }) // v3
		b.AddASN1BigInt(serial)
		algorithm(b)
		name(b) // issuer
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			addTime(b, notBefore)
			addTime(b, notAfter)
		})
		name(b) // subject
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			algorithm(b)
			b.AddASN1BitString(pub)
		})
		b.AddASN1(cbasn1.Tag(3).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				ext(b, oidKeyUsage, true, func(b *cryptobyte.Builder) { b.AddASN1BitString(keyUsageDigitalSign) })
				ext(b, oidExtKeyUsage, false, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1ObjectIdentifier(oidServerAuth)
						b.AddASN1ObjectIdentifier(oidClientAuth)
					})
				})
				for _, e := range extra {
					ext(b, e.id, false, func(b *cryptobyte.Builder) { b.AddBytes(e.value) })
				}
			})
		})
	})
	rawTBS, err := tbs.Bytes()
	if err != nil {
		return nil, err
	}
	var cert cryptobyte.Builder
	cert.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(rawTBS)
		algorithm(b)
		b.AddASN1BitString(ed25519.Sign(key, rawTBS))
	})
	return cert.Bytes()
}

// addTime writes a certificate time as RFC 5280 requires: UTCTime through 2049, GeneralizedTime after.
func addTime(b *cryptobyte.Builder, t time.Time) {
	t = t.UTC().Truncate(time.Second)
	if t.Year() < 2050 {
		b.AddASN1UTCTime(t)
	} else {
		b.AddASN1GeneralizedTime(t)
	}
}
