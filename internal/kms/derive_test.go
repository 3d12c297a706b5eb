package kms

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

// kat is a fixed master secret for known-answer tests.
var kat = &MasterSecret{
	Key:  bytes.Repeat([]byte{0x01}, MasterKeySize),
	Salt: bytes.Repeat([]byte{0x02}, MasterSaltSize),
}

// TestDeriveKnownAnswers pins the derivation: these values must never change, or clusters lose their keys.
// They were computed independently of this code:
//
//	python3 -c 'import hmac,hashlib; prk=hmac.new(b"\x02"*32,b"\x01"*32,hashlib.sha256).digest(); \
//	  print(hmac.new(prk,b"constellation/v1/disk-key/0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11\x01",hashlib.sha256).hexdigest())'
func TestDeriveKnownAnswers(t *testing.T) {
	d, err := NewDeriver(kat)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		purpose Purpose
		id      string
		length  int
		want    string
	}{
		{PurposeDiskKey, "0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11", 32, "89fc07c57f5dfa41f5a6de0cd641f629561cb4ca53f33597f04c72faf411a4eb"},
		{PurposeClusterID, "", 32, "af31c8cbed402cd8509987d048e78b81267eb964f965ab80cb5aa856c2571366"},
		{PurposeDataKey, "etcd-backup", 16, "816cc13506b89c7699aa0dac9c15c20b"},
		{PurposeCASeed, "kubernetes", 64, "4bebc81dd62c4cf384014645a67b77343c553b8e96f8c1188c5b4895735329d55c4f64a1eae6b10b043fa397bfd04edd4b423bb81f6f270a3139763bff924f1a"},
		{PurposeVolumeKey, "pvc-1234", 32, "cdb0182c0222f152a122a216fb2e6d143ac3699bde86ebb68810f32e77548d98"},
		{PurposeJoinConfig, "mac", 32, "c01e4ce008ae00c65b41d577abcaf652d336bfe5025fee6480a7d34e4de84fa4"},
		{PurposeMeasurementPolicy, "mac", 32, "48ce962fa92b01b18f4e320781d9338f5d5525067b77618a06455ba059055ca3"},
	}
	for _, tc := range tests {
		got, err := d.Derive(tc.purpose, tc.id, tc.length)
		if err != nil {
			t.Fatalf("Derive(%s, %q): %v", tc.purpose, tc.id, err)
		}
		if hex.EncodeToString(got) != tc.want {
			t.Errorf("Derive(%s, %q, %d) = %x, want %s", tc.purpose, tc.id, tc.length, got, tc.want)
		}
	}
	// Disk keys are 64 bytes (AES-256-XTS takes two 256-bit keys). HKDF's output for 64 bytes begins with its
	// output for 32 bytes, so the key above is the first half of this one (T(2) computed as T(1) is, with
	// T(1) prepended and the counter 2).
	disk, _ := d.DiskKey("0b6c3a2e-6a64-4a6f-9d4e-3f1f3e6e2f11")
	if hex.EncodeToString(disk) != "89fc07c57f5dfa41f5a6de0cd641f629561cb4ca53f33597f04c72faf411a4eb"+
		"18a5807670b7299de14559addf86cf2a9dcfa243eefee77dd1600b05fe8edd80" {
		t.Errorf("DiskKey = %x, want the 64-byte disk-key derivation", disk)
	}
	// The measurement policy's MAC key is its own: not the join configuration's.
	policyKey, _ := d.MeasurementPolicyKey()
	joinKey, _ := d.JoinConfigKey()
	if hex.EncodeToString(policyKey) != "48ce962fa92b01b18f4e320781d9338f5d5525067b77618a06455ba059055ca3" || bytes.Equal(policyKey, joinKey) {
		t.Errorf("MeasurementPolicyKey = %x", policyKey)
	}
}

func TestDeriveSeparatesPurposesAndIDs(t *testing.T) {
	d, _ := NewDeriver(kat)
	seen := map[string]string{}
	for _, p := range []Purpose{PurposeDiskKey, PurposeVolumeKey, PurposeDataKey, PurposeCASeed} {
		for _, id := range []string{"a", "b", "a.b", "A"} {
			k, err := d.Derive(p, id, 32)
			if err != nil {
				t.Fatal(err)
			}
			name := string(p) + "/" + id
			if other, dup := seen[string(k)]; dup {
				t.Fatalf("%s and %s derive the same key", name, other)
			}
			seen[string(k)] = name
		}
	}
	other, _ := NewDeriver(&MasterSecret{Key: kat.Key, Salt: bytes.Repeat([]byte{3}, MasterSaltSize)})
	a, _ := d.Derive(PurposeDataKey, "x", 32)
	b, _ := other.Derive(PurposeDataKey, "x", 32)
	if bytes.Equal(a, b) {
		t.Fatal("the salt does not change the derived key")
	}
}

func TestDeriveRejects(t *testing.T) {
	d, _ := NewDeriver(kat)
	tests := map[string]struct {
		purpose Purpose
		id      string
		length  int
		wantErr string
	}{
		"short key":          {PurposeDataKey, "x", 15, "out of range"},
		"long key":           {PurposeDataKey, "x", 65, "out of range"},
		"empty id":           {PurposeDataKey, "", 32, "invalid"},
		"id with slash":      {PurposeDataKey, "a/b", 32, "invalid"},
		"id with newline":    {PurposeDataKey, "a\nb", 32, "invalid"},
		"id too long":        {PurposeDataKey, strings.Repeat("a", MaxIDLength+1), 32, "invalid"},
		"unknown purpose":    {Purpose("master"), "x", 32, "unknown key purpose"},
		"cluster-id with id": {PurposeClusterID, "x", 32, "takes no identifier"},
	}
	for name, tc := range tests {
		if _, err := d.Derive(tc.purpose, tc.id, tc.length); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: Derive = %v, want error containing %q", name, err, tc.wantErr)
		}
	}
	if _, err := NewDeriver(&MasterSecret{Key: []byte{1}, Salt: kat.Salt}); err == nil {
		t.Error("short master key accepted")
	}
}

func TestClusterIDKnownAnswer(t *testing.T) {
	d, _ := NewDeriver(kat)
	id, err := d.ClusterID()
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(id) != "bfd97325b5de7e9bd4f5713f70b5511568cb829a6c97ead8174579f34bf9ad77" {
		t.Fatalf("ClusterID = %x", id)
	}
}
