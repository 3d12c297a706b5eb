package reattestation

import (
	"crypto/sha256"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/constellation-dev/constellation/internal/attestation"
	"github.com/constellation-dev/constellation/internal/attestation/eventlog"
	"github.com/constellation-dev/constellation/internal/attestation/measurements"
	"github.com/constellation-dev/constellation/internal/attestation/policyupdate"
	"github.com/constellation-dev/constellation/internal/attestation/vtpm"
)

const (
	oldImage = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	newImage = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

// setImageSets makes the cluster's member policy one of sets, each of the node image images names at its
// position (""/missing: none), as the join service builds it from the measurement policy update in force.
func (c *cluster) setImageSets(t *testing.T, images []string, sets ...measurements.M) {
	t.Helper()
	var vs []attestation.Validator
	for _, set := range sets {
		v, err := vtpm.NewValidator(c.roots, measurements.MemberPolicy(set, c.clusterID), nil)
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	v, err := policyupdate.AnyImage(vs, images)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.policy = v
	c.mu.Unlock()
}

// waitImage waits until the record of node name is Trusted and names image.
func (c *cluster) waitImage(t *testing.T, ctl *controller, name, image string) {
	t.Helper()
	for {
		ctl.waitCheck(t, name, func(check) bool { return true })
		if r, ok := c.record(t, name); ok && r.Trusted(time.Now()) && r.Image == image {
			return
		}
	}
}

// extended is set with PCR 4 as extendPCR leaves it: the set of the node image a node that extendPCR changed
// runs now.
func extended(set measurements.M) measurements.M {
	out := maps.Clone(set)
	ev := eventlog.NewBuilder().Append(measurements.PCRNodeImage, eventlog.IPL, []byte("a component loaded after the node joined"))
	old := set[measurements.PCRNodeImage].Expected
	out[measurements.PCRNodeImage] = measurements.Measurement{Expected: sha256.Sum256(append(old[:], ev.Digest[:]...))}
	return out
}

// TestRecordedImageFollowsMatchedSet: the image in a node's record is the image the measurement set its
// evidence matched names, whatever the node says of itself: during an upgrade window each node gets its own
// set's image; a set that names no image gives none; a node whose evidence fails loses it. A node's kubelet can
// neither write the image into its record nor does the image it writes on its Node object count.
func TestRecordedImageFollowsMatchedSet(t *testing.T) {
	c := newCluster(t, []string{"worker-0", "worker-1"})
	c.setImageSets(t, []string{oldImage}, c.base)
	ctl := c.start(t, fastOptions())
	c.waitImage(t, ctl, "worker-0", oldImage)
	c.waitImage(t, ctl, "worker-1", oldImage)

	// worker-1 now runs another image (its PCR 4 changed); the window accepts both, each with its image.
	newSet := extended(c.base)
	c.setImageSets(t, []string{oldImage, newImage}, c.base, newSet)
	extendPCR(t, c.nodes["worker-1"])
	c.waitImage(t, ctl, "worker-1", newImage)
	c.waitImage(t, ctl, "worker-0", oldImage)
	if got := c.statusOf(t, "worker-1"); !strings.HasPrefix(got, "trusted") {
		t.Fatalf("status of worker-1: %q", got)
	}

	// The window in the other order: the image follows the set, not the position.
	c.setImageSets(t, []string{newImage, oldImage}, newSet, c.base)
	ctl.waitCheck(t, "worker-1", func(check) bool { return true })
	c.waitImage(t, ctl, "worker-1", newImage)
	c.waitImage(t, ctl, "worker-0", oldImage)

	// Sets that name no image (an update of an earlier CLI): no image recorded.
	c.setImageSets(t, nil, c.base, newSet)
	c.waitImage(t, ctl, "worker-0", "")
	c.waitImage(t, ctl, "worker-1", "")

	// Labelled again, then worker-1's evidence fails: its record keeps no image.
	c.setImageSets(t, []string{oldImage, newImage}, c.base, newSet)
	c.waitImage(t, ctl, "worker-1", newImage)
	c.setImageSets(t, []string{oldImage}, c.base)
	ctl.waitState(t, "worker-1", Failed)
	if r, ok := c.record(t, "worker-1"); !ok || r.Image != "" || r.TrustedImage(time.Now()) != "" {
		t.Fatalf("the failed node's record: %+v", r)
	}
	if r, ok := c.record(t, "worker-0"); !ok || r.TrustedImage(time.Now()) != oldImage {
		t.Fatalf("worker-0's record: %+v", r)
	}
}
