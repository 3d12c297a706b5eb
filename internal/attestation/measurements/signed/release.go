package signed

import (
	_ "embed"
	"errors"
	"fmt"
)

// ReleaseRootFile is the release root in the repository, relative to the module root: the file this package
// embeds. A release manager replaces it with the root that the release key tool writes (see
// tools/release-key) and commits it; every CLI built from that commit trusts that root.
const ReleaseRootFile = "internal/attestation/measurements/signed/release-root.json"

//go:embed release-root.json
var releaseRootJSON []byte

// ReleaseRootJSON returns the embedded release root as committed.
func ReleaseRootJSON() []byte { return append([]byte(nil), releaseRootJSON...) }

// ReleaseRoot returns the root of releases embedded at build time: the release signing keys and the release
// log. It holds no development key.
func ReleaseRoot() (Root, error) {
	r, err := ParseRoot(releaseRootJSON)
	if err != nil {
		return Root{}, fmt.Errorf("the embedded release root (%s): %w", ReleaseRootFile, err)
	}
	if err := r.CheckRelease(); err != nil {
		return Root{}, fmt.Errorf("the embedded release root (%s): %w", ReleaseRootFile, err)
	}
	return r, nil
}

// CheckRelease checks that r can be a release root: it has keys, none of them a development key.
func (r Root) CheckRelease() error {
	if len(r.Keys) == 0 {
		return errors.New("a release root holds no signing key")
	}
	for _, k := range r.Keys {
		if k.Development {
			return fmt.Errorf("a release root holds the development key %q", k.Name)
		}
	}
	return nil
}

// AsDevelopment returns r with every key marked development: for a root read from a place a local build
// writes, whose keys sign nothing but local builds whatever the file says.
func (r Root) AsDevelopment() Root {
	keys := make([]Key, len(r.Keys))
	for i, k := range r.Keys {
		k.Development = true
		keys[i] = k
	}
	r.Keys = keys
	return r
}
