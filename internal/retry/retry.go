// Package retry runs a step of a node's start-up again until it succeeds: the services a node depends on
// (the provider's metadata service, the bootstrapper, the API server) come up in no fixed order.
package retry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Do runs fn until it succeeds or ctx ends, waiting 100 ms after the first failure and twice as long after
// each further one, up to 5 s. Each failure is logged as a warning naming what.
func Do(ctx context.Context, log *slog.Logger, what string, fn func() error) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			return nil
		}
		log.Warn("retrying", "step", what, "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("%s: %w", what, ctx.Err()), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
