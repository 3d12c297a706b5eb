//go:build linux && cgo

package luks

/*
#cgo pkg-config: libcryptsetup
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <libcryptsetup.h>

// cst_log keeps libcryptsetup's last error message of one device handle in the buffer usrptr points to
// (CST_LOG_SIZE bytes), so that it can be part of the Go error. libcryptsetup never logs keys.
#define CST_LOG_SIZE 512
static void cst_log(int level, const char *msg, void *usrptr) {
	if (level != CRYPT_LOG_ERROR || usrptr == NULL || msg == NULL) return;
	char *buf = usrptr;
	strncpy(buf, msg, CST_LOG_SIZE - 1);
	buf[CST_LOG_SIZE - 1] = 0;
	size_t n = strlen(buf);
	while (n > 0 && (buf[n-1] == '\n' || buf[n-1] == '.')) buf[--n] = 0;
}

// cst_quiet drops the messages of calls without a device handle (libcryptsetup prints them otherwise).
static void cst_quiet(int level, const char *msg, void *usrptr) {}

static void cst_set_log(struct crypt_device *cd, char *buf) {
	crypt_set_log_callback(cd, cst_log, buf);
}
static void cst_set_quiet(void) {
	crypt_set_log_callback(NULL, cst_quiet, NULL);
}
*/
import "C"

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"unsafe"

	"github.com/constellation-dev/constellation/internal/diskmapper/luks/testhook"
)

// Disk encryption parameters.
const (
	cipher     = "aes"
	cipherMode = "xts-plain64"
	integrity  = "hmac(sha256)" // cryptsetup's "hmac-sha256"
	// Keyslots use PBKDF2-SHA256 with the format's minimum iteration count and no benchmark: every key this
	// package stores is 64 uniformly random bytes, so a slow, memory-hard KDF adds no protection and only
	// slows every boot (and makes it depend on the machine's memory).
	pbkdfType = "pbkdf2"
	pbkdfHash = "sha256"
	// blankCheckSize is how much of a disk must be zero for Format to take it as blank.
	blankCheckSize = 1 << 20
)

// C strings that live as long as the process.
var (
	cLUKS2      = C.CString("LUKS2")
	cCipher     = C.CString(cipher)
	cCipherMode = C.CString(cipherMode)
	cIntegrity  = C.CString(integrity)
	cPBKDF      = C.CString(pbkdfType)
	cPBKDFHash  = C.CString(pbkdfHash)
)

func init() { C.cst_set_quiet() }

// device is a libcryptsetup handle of one disk.
type device struct {
	cd   *C.struct_crypt_device
	log  *C.char
	path string
	// meta is the checked metadata of the loaded header.
	meta Metadata
}

// diskProfile is the parameters every header must have (see profile).
var diskProfile = integrityProfile

// openDevice returns a handle of the disk at path; with load, it loads its LUKS2 header and checks that the
// metadata libcryptsetup loaded, the metadata every later call of the handle acts on, has exactly the
// parameters Format writes (checkParams).
func openDevice(path string, load bool) (*device, error) {
	d := &device{path: path, log: (*C.char)(C.calloc(1, C.CST_LOG_SIZE))}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	if r := C.crypt_init(&d.cd, cpath); r < 0 {
		C.free(unsafe.Pointer(d.log))
		return nil, fmt.Errorf("opening %s: %w", path, syscall.Errno(-r))
	}
	C.cst_set_log(d.cd, d.log)
	if load {
		if r := C.crypt_load(d.cd, cLUKS2, nil); r < 0 {
			err := d.err("loading the LUKS2 header", r)
			d.free()
			return nil, err
		}
		if err := d.checkParams(); err != nil {
			d.free()
			return nil, err
		}
	}
	return d, nil
}

// checkParams parses the JSON metadata libcryptsetup holds for the disk (its in-memory copy, from which it
// activates and writes) with ParseMetadata and cross-checks what libcryptsetup itself reports. Anything but
// the parameters Format writes is refused: the host can rewrite both header copies (their checksum is not
// keyed), e.g. to a cipher_null segment that the genuine keyslot still opens.
func (d *device) checkParams() error {
	uuid := d.uuid()
	fail := func(err error) error {
		return fmt.Errorf("disk %s (%s): %w. Refusing to use it: its header was changed by someone who can write the disk (the host); nothing on the disk was changed. Replace the disk with a blank one if its data is not needed", uuid, d.path, err)
	}
	if !uuidPattern.MatchString(uuid) {
		return fail(badParam("UUID %q is not a lower-case 8-4-4-4-12 hex UUID", uuid))
	}
	var js *C.char
	if r := C.crypt_dump_json(d.cd, &js, 0); r < 0 {
		return d.err("reading the loaded LUKS2 metadata", r)
	}
	if js == nil {
		return fmt.Errorf("reading the loaded LUKS2 metadata of %s: libcryptsetup returned none", d.path)
	}
	var mdSize, ksSize C.uint64_t
	if r := C.crypt_get_metadata_size(d.cd, &mdSize, &ksSize); r < 0 {
		return d.err("reading the LUKS2 metadata size", r)
	}
	m, err := parseMetadata([]byte(C.GoString(js)), uint64(mdSize), diskProfile)
	if err != nil {
		return fail(err)
	}
	var reqs C.uint32_t
	if r := C.crypt_persistent_flags_get(d.cd, C.CRYPT_FLAGS_REQUIREMENTS, &reqs); r < 0 || reqs != 0 {
		return fail(badParam("requirement flags %#x", uint32(reqs)))
	}
	var flags C.uint32_t
	if r := C.crypt_persistent_flags_get(d.cd, C.CRYPT_FLAGS_ACTIVATION, &flags); r < 0 || flags != 0 {
		return fail(badParam("persistent activation flags %#x", uint32(flags)))
	}
	switch {
	case uint64(ksSize) != m.KeyslotsSize:
		return fail(badParam("libcryptsetup reports a keyslots area of %d bytes, the metadata %d", uint64(ksSize), m.KeyslotsSize))
	case uint64(C.crypt_get_data_offset(d.cd))*512 != m.DataOffset:
		return fail(badParam("libcryptsetup reports the data at %d, the metadata at %d", uint64(C.crypt_get_data_offset(d.cd))*512, m.DataOffset))
	case C.GoString(C.crypt_get_cipher(d.cd)) != cipher || C.GoString(C.crypt_get_cipher_mode(d.cd)) != cipherMode:
		return fail(badParam("libcryptsetup reports the cipher %s-%s", C.GoString(C.crypt_get_cipher(d.cd)), C.GoString(C.crypt_get_cipher_mode(d.cd))))
	case int(C.crypt_get_volume_key_size(d.cd)) != m.profile.keyslotKeySize:
		return fail(badParam("libcryptsetup reports a %d-byte volume key", int(C.crypt_get_volume_key_size(d.cd))))
	}
	d.meta = m
	return nil
}

// writeParamsMAC stores the MAC of the header's parameters under key in the parameter token.
func (d *device) writeParamsMAC(key []byte) error {
	mac, err := d.meta.ParamsMAC(d.uuid(), key)
	if err != nil {
		return err
	}
	if hmac.Equal(d.meta.MAC, mac) {
		// Already in place (a re-key finished after a power loss): rewriting it would remove it first, and a
		// power loss between the two header writes would leave an initialised disk without its MAC.
		return nil
	}
	cjs := C.CString(paramsToken(mac))
	defer C.free(unsafe.Pointer(cjs))
	if C.crypt_token_status(d.cd, metaParamsTokenID, nil) != C.CRYPT_TOKEN_INACTIVE {
		if r := C.crypt_token_json_set(d.cd, metaParamsTokenID, nil); r < 0 {
			return d.err("removing the old parameter token", r)
		}
	}
	if r := C.crypt_token_json_set(d.cd, metaParamsTokenID, cjs); r < 0 {
		return d.err("writing the parameter token", r)
	}
	d.meta.MAC = mac
	return nil
}

func (d *device) free() {
	C.crypt_free(d.cd)
	C.free(unsafe.Pointer(d.log))
}

// err describes a failed libcryptsetup call, with the library's own message when it gave one.
func (d *device) err(op string, r C.int) error {
	msg := C.GoString(d.log)
	*d.log = 0
	if msg != "" {
		return fmt.Errorf("%s of %s: %w (libcryptsetup: %s)", op, d.path, syscall.Errno(-r), msg)
	}
	return fmt.Errorf("%s of %s: %w", op, d.path, syscall.Errno(-r))
}

func keyPtr(key []byte) *C.char { return (*C.char)(unsafe.Pointer(&key[0])) }

// slotOf returns the keyslot that key opens, without activating anything, or -1 if it opens none.
func (d *device) slotOf(slot C.int, key []byte) (C.int, error) {
	r := C.crypt_activate_by_passphrase(d.cd, nil, slot, keyPtr(key), C.size_t(len(key)), 0)
	switch {
	case r >= 0:
		return r, nil
	case r == -C.EPERM || r == -C.ENOENT:
		*d.log = 0
		return -1, nil
	default:
		return -1, d.err("checking a key", r)
	}
}

func (d *device) setPBKDF() error {
	p := C.struct_crypt_pbkdf_type{_type: cPBKDF, hash: cPBKDFHash, iterations: pbkdfIterations, flags: C.CRYPT_PBKDF_NO_BENCHMARK}
	if r := C.crypt_set_pbkdf_type(d.cd, &p); r < 0 {
		return d.err("setting the keyslot KDF", r)
	}
	return nil
}

func (d *device) setLabel(label, subsystem string) error {
	cl, cs := C.CString(label), C.CString(subsystem)
	defer C.free(unsafe.Pointer(cl))
	defer C.free(unsafe.Pointer(cs))
	if r := C.crypt_set_label(d.cd, cl, cs); r < 0 {
		return d.err("writing the header label", r)
	}
	return nil
}

func (d *device) label() (string, string) {
	return C.GoString(C.crypt_get_label(d.cd)), C.GoString(C.crypt_get_subsystem(d.cd))
}

func (d *device) uuid() string { return C.GoString(C.crypt_get_uuid(d.cd)) }

// activeSlots returns the keyslots in use.
func (d *device) activeSlots() []C.int {
	var slots []C.int
	for i := C.int(0); i < C.crypt_keyslot_max(cLUKS2); i++ {
		if s := C.crypt_keyslot_status(d.cd, i); s == C.CRYPT_SLOT_ACTIVE || s == C.CRYPT_SLOT_ACTIVE_LAST {
			slots = append(slots, i)
		}
	}
	return slots
}

// checkBlank refuses a disk that holds a LUKS2 header or any other data in its first MiB: a state disk is
// never formatted over something by accident.
func checkBlank(path string) error {
	h, err := ReadHeader(path)
	switch {
	case err == nil:
		return fmt.Errorf("%s already holds a LUKS2 header (disk %s, %s); refusing to format it", path, h.UUID, h.State())
	case !errors.Is(err, ErrNoHeader):
		return fmt.Errorf("%s holds a damaged LUKS2 header; refusing to format it: %w", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, blankCheckSize)
	n, _ := f.ReadAt(b, 0)
	for _, c := range b[:n] {
		if c != 0 {
			return fmt.Errorf("%s is not blank (its first MiB holds data, perhaps another filesystem or a partition table); refusing to format it", path)
		}
	}
	return nil
}

// Format makes a blank disk a LUKS2 state disk: aes-xts-plain64 with dm-integrity (hmac-sha256), 4096-byte
// sectors, labelled "constellation-new", with one keyslot for a random first-boot key, which it returns (the
// caller keeps it in memory only, passes it to SetKey and then clears it). It wipes the data area through a
// private mapping so that every sector has a valid integrity tag; this needs device-mapper with dm-crypt and
// dm-integrity, and takes time proportional to the disk size. It refuses a disk that is not blank.
func Format(path string) (uuid string, firstBootKey []byte, err error) {
	return format(path, true)
}

// format is Format; withIntegrity false (a plain LUKS2 volume, no wipe) lets tests without device-mapper
// exercise the keyslot handling on a file.
func format(path string, withIntegrity bool) (string, []byte, error) {
	if err := checkBlank(path); err != nil {
		return "", nil, err
	}
	d, err := openDevice(path, false)
	if err != nil {
		return "", nil, err
	}
	defer d.free()
	label := C.CString(LabelNew)
	defer C.free(unsafe.Pointer(label))
	pbkdf := C.struct_crypt_pbkdf_type{_type: cPBKDF, hash: cPBKDFHash, iterations: pbkdfIterations, flags: C.CRYPT_PBKDF_NO_BENCHMARK}
	var pin runtime.Pinner // params points to pbkdf while C reads it
	defer pin.Unpin()
	pin.Pin(&pbkdf)
	params := C.struct_crypt_params_luks2{pbkdf: &pbkdf, sector_size: sectorSize, label: label}
	vkSize := volumeKeySize
	if withIntegrity {
		params.integrity = cIntegrity
	} else {
		vkSize = 64
	}
	if r := C.crypt_format(d.cd, cLUKS2, cCipher, cCipherMode, nil, nil, C.size_t(vkSize), unsafe.Pointer(&params)); r < 0 {
		return "", nil, d.err("formatting", r)
	}
	if err := d.setPBKDF(); err != nil {
		return "", nil, err
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return "", nil, err
	}
	slot := C.crypt_keyslot_add_by_volume_key(d.cd, C.CRYPT_ANY_SLOT, nil, 0, keyPtr(key), C.size_t(len(key)))
	if slot < 0 {
		return "", nil, d.err("adding the first-boot keyslot", slot)
	}
	// What was just written must pass the check every later use of the disk makes.
	if err := d.checkParams(); err != nil {
		return "", nil, fmt.Errorf("the new header fails its own check (libcryptsetup changed what it writes?): %w", err)
	}
	if withIntegrity {
		if err := d.wipe(slot, key); err != nil {
			return "", nil, err
		}
	}
	return d.uuid(), key, nil
}

// wipe writes zeros over the whole data area through a private mapping (with the dm-integrity journal, as
// every other write), so that every sector has a valid integrity tag.
func (d *device) wipe(slot C.int, key []byte) error {
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	name := "constellation-format-" + hex.EncodeToString(rnd[:])
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	if r := C.crypt_activate_by_passphrase(d.cd, cname, slot, keyPtr(key), C.size_t(len(key)), C.CRYPT_ACTIVATE_PRIVATE); r < 0 {
		return d.err("mapping the new disk to wipe it", r)
	}
	cpath := C.CString("/dev/mapper/" + name)
	defer C.free(unsafe.Pointer(cpath))
	r := C.crypt_wipe(d.cd, cpath, C.CRYPT_WIPE_ZERO, 0, 0, 1<<20, 0, nil, nil)
	var err error
	if r < 0 {
		err = d.err("wiping the data area", r)
	}
	if r := C.crypt_deactivate(d.cd, cname); r < 0 {
		err = errors.Join(err, d.err("unmapping the wiped disk", r))
	}
	return err
}

// SetKey replaces the disk's key oldKey (the first-boot key, or the previous key) by newKey, the key derived
// for the disk's UUID, in a way that survives a power loss at any point:
//
//  1. add a keyslot for newKey (unlocked with oldKey), and check that newKey opens it;
//  2. label the header "constellation-initialised";
//  3. destroy oldKey's keyslot.
//
// Before 1 completes, oldKey alone opens the disk; between 1 and 3 both open a keyslot; after 3, newKey alone.
// Before the label, SetKey stores the parameter MAC under newKey (see the package documentation): from then on
// only newKey maps the disk (Open), and finishing needs newKey. A node that
// lost oldKey (it was in memory only) calls SetKey again with oldKey nil: if newKey already opens a keyslot,
// SetKey finishes the job (label, then every other keyslot destroyed). If neither key opens the disk, nothing
// is changed and the error wraps ErrWrongKey.
func SetKey(path string, oldKey, newKey []byte) error {
	if err := checkKey("new key", newKey); err != nil {
		return err
	}
	if oldKey != nil {
		if err := checkKey("old key", oldKey); err != nil {
			return err
		}
	}
	d, err := openDevice(path, true)
	if err != nil {
		return err
	}
	defer d.free()
	label, subsystem := d.label()
	if label != LabelNew && label != LabelInitialised {
		return fmt.Errorf("%s: header label %q: not a state disk of this product; its keys are left alone", path, label)
	}
	newSlot, err := d.slotOf(C.CRYPT_ANY_SLOT, newKey)
	if err != nil {
		return err
	}
	oldSlot := C.int(-1)
	if oldKey != nil {
		if oldSlot, err = d.slotOf(C.CRYPT_ANY_SLOT, oldKey); err != nil {
			return err
		}
	}
	if label == LabelInitialised {
		// The header's parameters were authenticated when the key was set: the MAC must verify under a key
		// that opens the disk before anything is written.
		var err error
		switch {
		case newSlot >= 0:
			err = d.meta.VerifyMAC(d.uuid(), newKey)
		case oldSlot >= 0:
			err = d.meta.VerifyMAC(d.uuid(), oldKey)
		}
		if err != nil {
			return fmt.Errorf("%s: %w; nothing was changed", path, err)
		}
	}
	if newSlot < 0 {
		if oldSlot < 0 {
			return fmt.Errorf("%w: neither the old nor the new key opens disk %s; nothing was changed. If this disk never got its key and its first-boot key is lost, it holds no state: mark it for reset (MarkReset) and format it again", ErrWrongKey, d.uuid())
		}
		if err := d.setPBKDF(); err != nil {
			return err
		}
		newSlot = C.crypt_keyslot_add_by_passphrase(d.cd, C.CRYPT_ANY_SLOT, keyPtr(oldKey), C.size_t(len(oldKey)), keyPtr(newKey), C.size_t(len(newKey)))
		if newSlot < 0 {
			return d.err("adding the keyslot of the new key", newSlot)
		}
		if got, err := d.slotOf(newSlot, newKey); err != nil || got != newSlot {
			C.crypt_keyslot_destroy(d.cd, newSlot)
			return errors.Join(fmt.Errorf("%s: the new keyslot %d does not open with the new key; it was removed, the old key still opens the disk", path, newSlot), err)
		}
	}
	if err := d.writeParamsMAC(newKey); err != nil {
		return err
	}
	if label != LabelInitialised {
		if err := d.setLabel(LabelInitialised, subsystem); err != nil {
			return err
		}
	}
	if testhook.BeforeDestroyOldKeyslot != nil {
		testhook.BeforeDestroyOldKeyslot()
	}
	for _, s := range d.activeSlots() {
		if s == newSlot || (oldKey != nil && s != oldSlot) {
			continue
		}
		if r := C.crypt_keyslot_destroy(d.cd, s); r < 0 {
			return d.err(fmt.Sprintf("destroying the old keyslot %d", s), r)
		}
	}
	return nil
}

// Supported reports whether LUKS2 state disks can be used here: this binary has libcryptsetup, and the kernel
// has device-mapper (/dev/mapper/control). Without device-mapper nothing can be mapped; the error says so.
func Supported() error {
	// The device node may exist without the driver behind it; the kernel lists its drivers in /proc/misc.
	misc, err := os.ReadFile("/proc/misc")
	if err != nil {
		return fmt.Errorf("reading the kernel's drivers: %w", err)
	}
	if !slices.Contains(strings.Fields(string(misc)), "device-mapper") {
		return errors.New("the kernel has no device-mapper (not in /proc/misc)")
	}
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		return fmt.Errorf("device-mapper has no control device: %w", err)
	}
	return nil
}

func checkName(name string) error {
	if name == "" || len(name) > 127 || strings.ContainsAny(name, "/ \t\n") || name == "." || name == ".." {
		return fmt.Errorf("mapping name %q: want a plain name (no slash or space, at most 127 bytes)", name)
	}
	return nil
}

// Open maps the state disk at /dev/mapper/<name> with key (the key derived for its UUID). A header whose
// parameters are not the ones Format writes, or whose parameter MAC does not verify under key, is refused with
// an error wrapping ErrBadParameters (see the package documentation); a key that opens no keyslot with one
// wrapping ErrWrongKey. Either way nothing is mapped and nothing on the disk is written. A disk that was
// never given its key (label "constellation-new") is refused: nothing may be stored under a first-boot key,
// which is what makes the reset rule safe.
func Open(path, name string, key []byte) (*Mapping, error) {
	if err := checkKey("disk key", key); err != nil {
		return nil, err
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	d, err := openDevice(path, true)
	if err != nil {
		return nil, err
	}
	defer d.free()
	uuid := d.uuid()
	switch label, _ := d.label(); label {
	case LabelInitialised:
	case LabelNew:
		return nil, fmt.Errorf("disk %s was never given its key (label %q): set it with SetKey before storing anything on it", uuid, label)
	default:
		return nil, fmt.Errorf("disk %s: header label %q: not a state disk of this product; refusing to open it", uuid, label)
	}
	slot, err := d.slotOf(C.CRYPT_ANY_SLOT, key)
	if err != nil {
		return nil, err
	}
	if slot < 0 {
		return nil, fmt.Errorf("%w: the key opens no keyslot of disk %s; it is not this disk's key. A node must use the key derived for this disk's UUID (%s), from the join service or the master secret; nothing on the disk was changed", ErrWrongKey, uuid, uuid)
	}
	if err := d.meta.VerifyMAC(uuid, key); err != nil {
		return nil, fmt.Errorf("disk %s (%s): %w. Refusing to map it; nothing on the disk was changed", uuid, path, err)
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	r := C.crypt_activate_by_passphrase(d.cd, cname, slot, keyPtr(key), C.size_t(len(key)), 0)
	if r == -C.EPERM {
		return nil, fmt.Errorf("%w: the key opens no keyslot of disk %s; nothing on the disk was changed", ErrWrongKey, uuid)
	}
	if r < 0 {
		return nil, d.err("mapping the disk", r)
	}
	m := &Mapping{Name: name, Path: "/dev/mapper/" + name, UUID: uuid}
	// libcryptsetup maps from the metadata it loaded and this package checked; should it have read the header
	// again meanwhile, what it holds now differs, and the mapping is removed before anything uses it.
	checked := d.meta
	if err := d.checkParams(); err != nil || !sameParams(checked, d.meta) {
		return nil, errors.Join(fmt.Errorf("disk %s: its header changed while it was mapped; the mapping is removed", uuid), err, m.Close())
	}
	return m, nil
}

func sameParams(a, b Metadata) bool {
	return a.DataOffset == b.DataOffset && a.JSONSize == b.JSONSize && a.KeyslotsSize == b.KeyslotsSize &&
		a.DigestIterations == b.DigestIterations && bytes.Equal(a.DigestSalt, b.DigestSalt) &&
		bytes.Equal(a.DigestValue, b.DigestValue) && bytes.Equal(a.MAC, b.MAC)
}

// Close removes the mapping; it fails while the mapping is in use (mounted, or open).
func (m *Mapping) Close() error {
	cname := C.CString(m.Name)
	defer C.free(unsafe.Pointer(cname))
	var cd *C.struct_crypt_device
	if r := C.crypt_init_by_name(&cd, cname); r < 0 {
		return fmt.Errorf("closing %s: %w", m.Path, syscall.Errno(-r))
	}
	defer C.crypt_free(cd)
	if r := C.crypt_deactivate(cd, cname); r < 0 {
		return fmt.Errorf("closing %s: %w", m.Path, syscall.Errno(-r))
	}
	return nil
}

// MarkReset puts the reset mark on the disk's header (see the package documentation for what it does and
// does not do).
func MarkReset(path string) error {
	d, err := openDevice(path, true)
	if err != nil {
		return err
	}
	defer d.free()
	label, _ := d.label()
	return d.setLabel(label, SubsystemReset)
}

// ResetIfMarked applies the reset rule: a disk with the reset mark that was never given its key is wiped
// (every keyslot destroyed, so its volume key and with it all data is gone, then its header areas zeroed, so
// that it is blank for Format) and true is returned. An unmarked disk is left alone (false, nil); a marked
// disk that was initialised too, with an error wrapping ErrResetRefused.
func ResetIfMarked(path string) (bool, error) {
	h, err := ReadHeader(path)
	if err != nil {
		return false, err
	}
	if wipe, err := resetDecision(h); !wipe {
		return false, err
	}
	d, err := openDevice(path, true)
	if err != nil {
		return false, err
	}
	defer d.free()
	if d.uuid() != h.UUID {
		return false, fmt.Errorf("%s: libcryptsetup reads disk %s, the header parser %s; not wiping", path, d.uuid(), h.UUID)
	}
	if label, subsystem := d.label(); label != LabelNew || subsystem != SubsystemReset {
		return false, fmt.Errorf("%s: libcryptsetup reads label %q, subsystem %q; not wiping", path, label, subsystem)
	}
	for _, s := range d.activeSlots() {
		if r := C.crypt_keyslot_destroy(d.cd, s); r < 0 {
			return false, d.err(fmt.Sprintf("destroying keyslot %d", s), r)
		}
	}
	metadata := int64(C.crypt_get_data_offset(d.cd)) * 512
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	zero := make([]byte, 1<<20)
	for off := int64(0); off < metadata; off += int64(len(zero)) {
		n := min(int64(len(zero)), metadata-off)
		if _, err := f.WriteAt(zero[:n], off); err != nil {
			return false, fmt.Errorf("zeroing the header of %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		return false, err
	}
	return true, f.Close()
}
