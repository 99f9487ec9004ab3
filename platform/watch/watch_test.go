package watch_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/watch"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func TestNotifyWakesSubscribersOnCommitOnly(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pool := testkit.Pool(t, testkit.Database(t))
	hub := watch.NewHub(pool, "test_changes", nil, nil)
	a, unsubA := hub.Subscribe("a")
	defer unsubA()
	b, unsubB := hub.Subscribe("b")
	defer unsubB()
	// Run returns nil: it retries until ctx ends.
	go func() { _ = hub.Run(ctx) }()
	drain := func(ch <-chan struct{}) { // the hub wakes everyone once it listens
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("no initial wake-up")
		}
	}
	drain(a)
	drain(b)

	rolledBack := errors.New("roll back")
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := watch.Notify(ctx, tx, "test_changes", "a"); err != nil {
			return err
		}
		return rolledBack
	}); !errors.Is(err, rolledBack) {
		t.Fatal(err)
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return watch.Notify(ctx, tx, "test_changes", "b") }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b:
	case <-time.After(10 * time.Second):
		t.Fatal("committed change to b did not wake b")
	}
	select {
	case <-a:
		t.Fatal("a was woken by a rolled-back change or by b's change")
	case <-time.After(300 * time.Millisecond):
	}
}

// Past its limit a hub refuses streams with ErrTooManyStreams, counts the
// refusal, and frees a place when a stream ends; the limit is shared by the
// hubs given it.
func TestLimitBoundsStreams(t *testing.T) {
	t.Parallel()
	limit := watch.NewLimit(2)
	a := watch.NewHub(nil, "a", limit, nil) // Follow needs no connection
	b := watch.NewHub(nil, "b", limit, nil)
	stop := make(chan struct{})
	ended := make(chan error, 2)
	started := make(chan struct{}, 2)
	follow := func(h *watch.Hub) {
		first := true
		ended <- h.Follow(context.Background(), "k", time.Hour, stop, func() (bool, error) {
			if first {
				first = false
				started <- struct{}{}
			}
			return false, nil
		})
	}
	go follow(a)
	go follow(b)
	<-started
	<-started
	if err := a.Follow(context.Background(), "k", time.Hour, stop, func() (bool, error) { return true, nil }); !errors.Is(err, watch.ErrTooManyStreams) {
		t.Fatalf("third stream: %v, want ErrTooManyStreams", err)
	}
	if limit.Active() != 2 || limit.Rejected() != 1 {
		t.Fatalf("active %d rejected %d, want 2 and 1", limit.Active(), limit.Rejected())
	}
	close(stop)
	for range 2 {
		if err := <-ended; !errors.Is(err, watch.ErrStopping) {
			t.Fatalf("stream ended with %v, want ErrStopping", err)
		}
	}
	if err := b.Follow(context.Background(), "k", time.Hour, nil, func() (bool, error) { return true, nil }); err != nil {
		t.Fatalf("stream after the others ended: %v", err)
	}
	if limit.Active() != 0 {
		t.Fatalf("active %d after every stream ended", limit.Active())
	}
}
