package backoff_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/switchyard/switchyard/platform/backoff"
)

// retry is the package doc's example: try until it succeeds or ctx ends.
func retry(ctx context.Context, logger *slog.Logger, try func(context.Context) error) error {
	b := backoff.New(100*time.Millisecond, 5*time.Second)
	for {
		err := try(ctx)
		if err == nil {
			return nil
		}
		logger.Warn("failed; retrying", "error", err, "retry_in", b.Next())
		if !b.Wait(ctx) {
			return ctx.Err()
		}
	}
}

func Example() {
	attempts := 0
	err := retry(context.Background(), slog.New(slog.DiscardHandler), func(context.Context) error {
		attempts++
		if attempts < 2 {
			return errors.New("not yet")
		}
		return nil
	})
	fmt.Println(attempts, err)
	// Output: 2 <nil>
}
