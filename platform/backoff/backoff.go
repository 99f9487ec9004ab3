// Package backoff spaces out retries: each wait is twice the one before, up
// to a maximum, and a wait ends early when its context does.
//
//	b := backoff.New(100*time.Millisecond, 5*time.Second)
//	for {
//		err := try(ctx)
//		if err == nil {
//			return nil
//		}
//		logger.Warn("failed; retrying", "error", err, "retry_in", b.Next())
//		if !b.Wait(ctx) {
//			return ctx.Err()
//		}
//	}
package backoff

import (
	"context"
	"time"
)

// Backoff is the state of one retry loop; it is not safe for concurrent use.
type Backoff struct {
	initial, max, next time.Duration
}

// New returns a backoff whose first wait is initial and whose waits never
// exceed max.
func New(initial, max time.Duration) *Backoff {
	return &Backoff{initial: initial, max: max, next: initial}
}

// Next returns how long the next Wait sleeps.
func (b *Backoff) Next() time.Duration { return b.next }

// Delay returns Next() and doubles the wait after it (up to the maximum),
// for a caller that waits in its own way.
func (b *Backoff) Delay() time.Duration {
	d := b.next
	b.next = min(2*b.next, b.max)
	return d
}

// Wait sleeps Delay() and reports false if ctx ended first.
func (b *Backoff) Wait(ctx context.Context) bool { return Sleep(ctx, b.Delay()) }

// Reset makes the next wait the initial one again, after a success.
func (b *Backoff) Reset() { b.next = b.initial }

// Sleep waits d and reports false if ctx ended first.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
