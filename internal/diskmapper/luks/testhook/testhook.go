// Package testhook lets the luks package's tests stop SetKey at its most delicate point. Only the luks package
// and test binaries may import it (test/houserules checks this): what ships never sets a hook.
package testhook

// BeforeDestroyOldKeyslot, if set, is called by SetKey after the new keyslot was added, checked and the
// header labelled initialised, and before the old keyslot is destroyed. The QEMU test powers the machine off
// there to simulate a power loss.
var BeforeDestroyOldKeyslot func()
