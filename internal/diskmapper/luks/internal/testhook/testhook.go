// Package testhook lets tests inside the luks package tree stop SetKey at its most delicate point.
package testhook

// BeforeDestroyOldKeyslot, if set, is called by SetKey after the new keyslot was added, checked and the
// header labelled initialised, and before the old keyslot is destroyed. The QEMU test powers the machine off
// there to simulate a power loss.
var BeforeDestroyOldKeyslot func()
