package snp

import "testing"

// BenchmarkValidateGenuine measures the three steps on the genuine Milan report: parse, verify (chain and
// ECDSA P-384 signature) and policy.
func BenchmarkValidateGenuine(b *testing.B) {
	raw := readTestdata(b, "attestation.bin")
	table := MarshalCertTable(genuineCerts(b))
	v := genuineVerifier(b)
	p := genuinePolicy(b)
	b.ReportAllocs()
	for b.Loop() {
		certs, err := ParseCertTable(table)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Validate(v, p, raw, certs); err != nil {
			b.Fatal(err)
		}
	}
}
