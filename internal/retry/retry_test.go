package retry

import (
	"context"
	"errors"
	"log/slog"
	"testing"
)

func TestDo(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	calls := 0
	if err := Do(context.Background(), log, "step", func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || calls != 3 {
		t.Fatalf("Do = %v after %d calls, want success after 3", err, calls)
	}

	ctx, cancel := context.WithCancel(context.Background())
	failure := errors.New("unreachable")
	err := Do(ctx, log, "reaching the service", func() error { cancel(); return failure })
	if !errors.Is(err, context.Canceled) || !errors.Is(err, failure) {
		t.Fatalf("Do after cancel = %v, want both the context's and the last error", err)
	}
}
