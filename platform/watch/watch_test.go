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
	hub := watch.NewHub(pool, "test_changes", nil)
	a, unsubA := hub.Subscribe("a")
	defer unsubA()
	b, unsubB := hub.Subscribe("b")
	defer unsubB()
	go hub.Run(ctx)
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
