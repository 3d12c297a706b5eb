package launch

import (
	"crypto/sha512"
	"encoding/binary"
)

// DigestSize is the size of a launch measurement: a SHA-384 digest.
const DigestSize = sha512.Size384

// pageType is the type of a page in the PAGE_INFO structure of SNP_LAUNCH_UPDATE.
type pageType uint8

const (
	pageNormal     pageType = 1
	pageVMSA       pageType = 2
	pageZero       pageType = 3
	pageUnmeasured pageType = 4
	pageSecrets    pageType = 5
	pageCPUID      pageType = 6
)

// vmsaGPA is the address the secure processor records for VMSA pages: (u64)-1, page-aligned, bits above 51
// clear.
const vmsaGPA = 0xFFFFFFFFF000

// pageInfoSize is the size of the PAGE_INFO structure that each step of the chain hashes.
const pageInfoSize = 0x70

// chain is the running launch digest.
type chain [DigestSize]byte

// update folds one page into the chain: the new digest is SHA-384 of PAGE_INFO = previous digest, contents
// digest, length (16 bits), page type, IMI flag (0), VMPL3/2/1 permissions (0), a reserved byte and the GPA
// (64 bits), little-endian.
func (c *chain) update(t pageType, gpa uint64, contents *[DigestSize]byte) {
	var info [pageInfoSize]byte
	copy(info[0:], c[:])
	copy(info[DigestSize:], contents[:])
	binary.LittleEndian.PutUint16(info[2*DigestSize:], pageInfoSize)
	info[2*DigestSize+2] = byte(t)
	binary.LittleEndian.PutUint64(info[2*DigestSize+8:], gpa)
	*c = sha512.Sum384(info[:])
}

// measured folds the pages of data (whole pages) as normal pages, starting at gpa.
func (c *chain) normalPages(gpa uint64, data []byte) {
	for off := 0; off < len(data); off += PageSize {
		sum := sha512.Sum384(data[off : off+PageSize])
		c.update(pageNormal, gpa+uint64(off), &sum)
	}
}

// contentless folds size bytes of pages of type t, whose contents digest is zero, starting at gpa.
func (c *chain) contentless(t pageType, gpa uint64, size uint64) {
	var zero [DigestSize]byte
	for off := uint64(0); off < size; off += PageSize {
		c.update(t, gpa+off, &zero)
	}
}

// vmsa folds one VMSA page.
func (c *chain) vmsa(page *[PageSize]byte) {
	sum := sha512.Sum384(page[:])
	c.update(pageVMSA, vmsaGPA, &sum)
}
