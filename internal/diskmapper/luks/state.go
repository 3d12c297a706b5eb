package luks

import (
	"errors"
	"fmt"
)

// Header labels and the reset mark this package writes.
const (
	// LabelNew marks a disk formatted with a random first-boot key that was never given a derived key.
	LabelNew = "constellation-new"
	// LabelInitialised marks a disk whose key was set to a derived key: it may hold a node's state.
	LabelInitialised = "constellation-initialised"
	// SubsystemReset is the reset mark (in the header's subsystem field).
	SubsystemReset = "constellation-reset"
)

// State is a state disk's life-cycle state as its header tells it.
type State int

const (
	// StateForeign: a LUKS2 header this package did not write.
	StateForeign State = iota
	// StateNew: formatted, holds only the first-boot key; no node state was ever written.
	StateNew
	// StateInitialised: holds a derived key and possibly a node's state.
	StateInitialised
)

func (s State) String() string {
	switch s {
	case StateNew:
		return "new (never given its key)"
	case StateInitialised:
		return "initialised"
	default:
		return "not a state disk of this product"
	}
}

// State returns the disk's life-cycle state.
func (h Header) State() State {
	switch h.Label {
	case LabelNew:
		return StateNew
	case LabelInitialised:
		return StateInitialised
	default:
		return StateForeign
	}
}

// ResetMarked reports whether the disk carries the reset mark.
func (h Header) ResetMarked() bool { return h.Subsystem == SubsystemReset }

// ErrResetRefused is returned by ResetIfMarked for a marked disk that must not be wiped.
var ErrResetRefused = errors.New("reset refused")

// resetDecision applies the reset rule (see the package documentation) to a header: whether to wipe the disk,
// and, when a mark is not honoured, why.
func resetDecision(h Header) (bool, error) {
	if !h.ResetMarked() {
		return false, nil
	}
	switch h.State() {
	case StateNew:
		return true, nil
	case StateInitialised:
		return false, fmt.Errorf("%w: disk %s is marked for reset but was initialised (it may hold a node's state, e.g. an etcd member); a reset mark wipes only a disk that never got its key. To discard this disk, replace it with a blank one", ErrResetRefused, h.UUID)
	default:
		return false, fmt.Errorf("%w: disk %s is marked for reset but its header label %q is not this product's; it is left alone", ErrResetRefused, h.UUID, h.Label)
	}
}
