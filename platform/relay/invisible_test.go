package relay_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/pgcluster"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport/transporttest"
)

// A transaction the write-ahead log shows committed but other sessions do
// not see yet is not published, nor is anything after it, until they do:
// a consumer must not act on an event whose writer's effects it cannot
// read. A commit waiting for a synchronous standby (here one that never
// comes) is held in that state; the logical walsender has sent it already.
func TestCommitNotYetVisibleIsHeldBack(t *testing.T) {
	t.Parallel()
	testkit.SkipShort(t, "PostgreSQL")
	ctx := context.Background()
	// A cluster of its own: synchronous_standby_names is cluster-wide.
	// Commits wait for the standby only where synchronous_commit is on.
	c, err := pgcluster.Start(ctx, pgcluster.Options{DataDir: t.TempDir() + "/data", Settings: map[string]string{
		"synchronous_standby_names": "nobody",
		"synchronous_commit":        "local",
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	if err := c.CreateDatabase(ctx, "held"); err != nil {
		t.Fatal(err)
	}
	// One partition, so the order of publication is the order read.
	h := newHarnessOn(t, c.URL("held"), transporttest.New(t, "kafka", 1), outbox.ModeCDC)
	cfg := h.config()
	cfg.StuckAfter = 200 * time.Millisecond
	r, _, _ := h.start(cfg)
	if _, err := h.write(ctx, "first"); err != nil {
		t.Fatal(err)
	}
	h.readAll(1, time.Minute)

	// "waiting" commits and then waits for the standby; "after" commits
	// behind it and is visible at once.
	pid := make(chan uint32, 1)
	committed := make(chan error, 1)
	go func() {
		committed <- pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
				return err
			}
			var p uint32
			if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&p); err != nil {
				return err
			}
			pid <- p
			return h.writer.Write(ctx, tx, outbox.Event{AggregateType: aggregateType, AggregateID: "waiting", Message: wrapperspb.Int64(1)})
		})
	}()
	waiting := <-pid
	// Released however the test ends: the pool cannot close while the
	// commit holds one of its connections.
	t.Cleanup(func() {
		_, _ = h.pool.Exec(ctx, "SELECT pg_cancel_backend($1)", waiting)
		if err := <-committed; err != nil {
			t.Logf("the waiting commit: %v", err)
		}
	})
	testkit.WaitFor(t, time.Minute, "the commit to wait for the standby", func() bool {
		var event string
		err := h.pool.QueryRow(ctx, "SELECT wait_event FROM pg_stat_activity WHERE pid = $1", waiting).Scan(&event)
		return err == nil && event == "SyncRep"
	})
	if _, err := h.write(ctx, "after"); err != nil {
		t.Fatal(err)
	}

	testkit.WaitFor(t, time.Minute, "the relay to hold the invisible commit back", func() bool {
		return r.Stats().InvisibleWaits == 1
	})
	testkit.WaitFor(t, time.Minute, "the relay to report itself stuck", func() bool { return r.Stats().Stuck })
	if s := r.Stats(); !strings.Contains(s.StuckReason, "not visible") || s.Published != 1 {
		t.Fatalf("while held back: published %d (want 1, the first event), stuck reason %q", s.Published, s.StuckReason)
	}

	// Cancelling the wait makes the commit visible (it has committed locally).
	if _, err := h.pool.Exec(ctx, "SELECT pg_cancel_backend($1)", waiting); err != nil {
		t.Fatal(err)
	}
	if err := <-committed; err != nil {
		t.Fatalf("the waiting commit: %v", err)
	}
	committed <- nil // for the cleanup
	got := h.readAll(3, time.Minute)
	var keys []string
	for _, m := range got.msgs {
		if k := string(m.Key); len(keys) == 0 || keys[len(keys)-1] != k {
			keys = append(keys, k)
		}
	}
	if strings.Join(keys, " ") != "first waiting after" {
		t.Fatalf("published in the order %v, want first, waiting, after", keys)
	}
	testkit.WaitFor(t, time.Minute, "the relay to stop reporting itself stuck", func() bool { return !r.Stats().Stuck })
}
