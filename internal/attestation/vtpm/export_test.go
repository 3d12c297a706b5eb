package vtpm

import "time"

// SetClock replaces the validator's clock.
func SetClock(v *Validator, now func() time.Time) { v.now = now }
