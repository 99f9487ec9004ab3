package backoff_test

import (
	"context"
	"testing"
	"time"

	"github.com/switchyard/switchyard/platform/backoff"
)

func TestWaitsDoubleUpToTheMaximum(t *testing.T) {
	t.Parallel()
	b := backoff.New(time.Microsecond, 5*time.Microsecond)
	var got []time.Duration
	for range 5 {
		got = append(got, b.Next())
		if !b.Wait(context.Background()) {
			t.Fatal("Wait ended early")
		}
	}
	want := []time.Duration{1, 2, 4, 5, 5}
	for i := range want {
		if got[i] != want[i]*time.Microsecond {
			t.Fatalf("waits %v, want %v µs", got, want)
		}
	}
	b.Reset()
	if b.Next() != time.Microsecond {
		t.Fatalf("after Reset the next wait is %v", b.Next())
	}
}

func TestWaitEndsWithItsContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if backoff.New(time.Hour, time.Hour).Wait(ctx) {
		t.Fatal("Wait on an ended context reported a full wait")
	}
}
