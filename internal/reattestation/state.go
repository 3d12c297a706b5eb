package reattestation

import (
	"math/rand/v2"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// State is what the controller knows of a node's attestation.
type State string

// The states of a node.
const (
	// Pending: not verified since the controller started following the node, or since it rejoined.
	Pending State = "pending"
	// Trusted: its evidence verified within the last two intervals.
	Trusted State = "trusted"
	// Unreachable: no evidence for two intervals (the node or its verification service did not answer);
	// the controller keeps asking, with backoff. It never leads to Failed by itself.
	Unreachable State = "unreachable"
	// Failed: the node answered with evidence that is wrong (measurements, cluster ID, key binding, identity,
	// nonce). Only a fresh attested rejoin leaves it.
	Failed State = "failed"
)

// outcome is the result of one check of a node.
type outcome int

const (
	verified    outcome = iota // evidence valid under the current policy, bound to the recorded key
	unreachable                // no evidence: the node did not answer in time, or refused to issue
	wrong                      // evidence received and verified wrong
)

// String names the outcome as the metrics do.
func (o outcome) String() string {
	switch o {
	case verified:
		return "verified"
	case unreachable:
		return "unreachable"
	case wrong:
		return "wrong"
	}
	return "unknown"
}

// nodeState is the controller's record of one node.
type nodeState struct {
	State  State
	Reason string // why Failed, or the last error while Unreachable
	// LastVerified is when the node's evidence last verified (zero: never since the controller follows it).
	LastVerified time.Time
	// Since is when the node entered its state; UnreachableSince when the current run of failed checks began.
	Since            time.Time
	UnreachableSince time.Time
	// Misses counts the checks in a row without evidence.
	Misses int
	// UID is the UID of the Node object the record is of.
	UID types.UID
	// Image is the node image the node's evidence last proved: the image the measurement set it matched names
	// ("" if none, and on a Failed record).
	Image string
	// Released is the join service's last release of the node the controller acted on (see
	// [ReleasedAnnotation]); Epoch counts the controller's fresh starts of the node, so that a check begun
	// before one is not recorded after it.
	Released string
	Epoch    uint64
}

// timing is the schedule of checks.
type timing struct {
	Interval time.Duration
	// Jitter spreads the checks of the nodes: each waits Interval ± Jitter/2.
	Jitter time.Duration
	// RetryBase is the first retry delay after a miss; each further miss doubles it, up to Interval.
	RetryBase time.Duration
	// TaintAfter is how long a node may stay without evidence before it is tainted NoSchedule.
	TaintAfter time.Duration
}

// observe returns the record after one check with result o at now (reason: what was wrong or what failed).
// Failed is final here: only a fresh attested rejoin resets the record (see [Controller]).
func (s nodeState) observe(o outcome, reason string, now time.Time, t timing) nodeState {
	if s.State == Failed {
		return s
	}
	switch o {
	case verified:
		if s.State != Trusted {
			s.Since = now
		}
		s.State, s.Reason, s.LastVerified, s.Misses, s.UnreachableSince = Trusted, "", now, 0, time.Time{}
	case wrong:
		s.State, s.Reason, s.Since = Failed, reason, now
	case unreachable:
		if s.Misses == 0 {
			s.UnreachableSince = now
		}
		s.Misses++
		s.Reason = reason
		// Trusted as long as the last verification is within two intervals.
		if s.State == Trusted && !s.LastVerified.IsZero() && now.Sub(s.LastVerified) <= 2*t.Interval {
			break
		}
		if s.State != Unreachable {
			s.State, s.Since = Unreachable, now
		}
	}
	return s
}

// stale turns a Trusted record whose last verification is older than two intervals into Unreachable (the
// controller checks it at every wake-up, so that a node whose checks hang does not stay Trusted).
func (s nodeState) stale(now time.Time, t timing) nodeState {
	if s.State == Trusted && now.Sub(s.LastVerified) > 2*t.Interval {
		s.State, s.Since = Unreachable, now
		if s.UnreachableSince.IsZero() {
			s.UnreachableSince = s.LastVerified
		}
	}
	return s
}

// taintUnreachable tells whether the node has been without evidence long enough to be tainted NoSchedule.
func (s nodeState) taintUnreachable(now time.Time, t timing) bool {
	return s.State == Unreachable && !s.UnreachableSince.IsZero() && now.Sub(s.UnreachableSince) >= t.TaintAfter
}

// next is the delay until the node's next check: the interval with jitter after evidence, a backoff that
// starts at RetryBase and doubles up to the interval after misses.
func (s nodeState) next(t timing) time.Duration {
	if s.Misses == 0 || s.State == Failed {
		d := t.Interval
		if t.Jitter > 0 {
			d += time.Duration(rand.Int64N(int64(t.Jitter))) - t.Jitter/2
		}
		return d
	}
	d := t.RetryBase
	for i := 1; i < s.Misses && d < t.Interval; i++ {
		d *= 2
	}
	return min(d, t.Interval)
}
