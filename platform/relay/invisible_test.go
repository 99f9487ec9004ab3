package relay_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/pgcluster"
	"github.com/switchyard/switchyard/platform/relay"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport/transporttest"
)

// syncHarness is a harness on a cluster of its own, whose commits wait for
// the synchronous standbys that setStandbys names where synchronous_commit
// is on (the cluster's default is local): synchronous_standby_names is
// cluster-wide. One partition, so the order read is the order published.
func syncHarness(t *testing.T) *harness {
	t.Helper()
	testkit.SkipShort(t, "PostgreSQL")
	ctx := context.Background()
	c, err := pgcluster.Start(ctx, pgcluster.Options{DataDir: t.TempDir() + "/data", Settings: map[string]string{
		"synchronous_commit": "local",
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	if err := c.CreateDatabase(ctx, "held"); err != nil {
		t.Fatal(err)
	}
	return newHarnessOn(t, c.URL("held"), transporttest.New(t, "kafka", 1), outbox.ModeCDC)
}

// setStandbys sets synchronous_standby_names (ALTER SYSTEM, which a
// server's -c setting would override) and waits until the server uses it.
func (h *harness) setStandbys(names string) {
	h.t.Helper()
	ctx := context.Background()
	for _, sql := range []string{"ALTER SYSTEM SET synchronous_standby_names = " + pgx.Identifier{names}.Sanitize(), "SELECT pg_reload_conf()"} {
		if _, err := h.pool.Exec(ctx, sql); err != nil {
			h.t.Fatal(err)
		}
	}
	testkit.WaitFor(h.t, time.Minute, "synchronous_standby_names to be "+names, func() bool {
		var got string
		return h.pool.QueryRow(ctx, "SHOW synchronous_standby_names").Scan(&got) == nil && got == names
	})
}

// commitWaiting commits an event for aggregate agg with synchronous_commit
// on, which waits for a synchronous standby after the commit is in the WAL
// and before other sessions can see it. It returns once the commit waits;
// the wait is cancelled when the test ends, and done then delivers the
// commit's result.
func (h *harness) commitWaiting(agg string) (pid uint32, done <-chan error) {
	h.t.Helper()
	ctx := context.Background()
	pids := make(chan uint32, 1)
	result := make(chan error, 1)
	go func() {
		result <- pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
				return err
			}
			var p uint32
			if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&p); err != nil {
				return err
			}
			pids <- p
			return h.writer.Write(ctx, tx, outbox.Event{AggregateType: aggregateType, AggregateID: agg, Message: wrapperspb.Int64(1)})
		})
	}()
	select {
	case pid = <-pids:
	case err := <-result:
		h.t.Fatalf("the waiting commit: %v", err)
	case <-time.After(time.Minute):
		h.t.Fatal("the waiting commit did not start within a minute")
	}
	// Whatever happens, the pool cannot close while the commit holds one
	// of its connections: cancelling the wait ends it (the commit stays).
	h.t.Cleanup(func() {
		_, _ = h.pool.Exec(ctx, "SELECT pg_cancel_backend($1)", pid)
	})
	testkit.WaitFor(h.t, time.Minute, "the commit to wait for the standby", func() bool {
		var event string
		err := h.pool.QueryRow(ctx, "SELECT coalesce(wait_event, '') FROM pg_stat_activity WHERE pid = $1", pid).Scan(&event)
		return err == nil && event == "SyncRep"
	})
	return pid, result
}

// A transaction the write-ahead log shows committed but other sessions do
// not see yet is not published, nor is anything after it, until they do:
// a consumer must not act on an event whose writer's effects it cannot
// read. A commit waiting for a synchronous standby (here one that never
// comes) is held in that state; the logical walsender has sent it already.
func TestCommitNotYetVisibleIsHeldBack(t *testing.T) {
	t.Parallel()
	h := syncHarness(t)
	h.setStandbys("nobody")
	ctx := context.Background()
	cfg := h.config()
	cfg.StuckAfter = 200 * time.Millisecond
	r, _, _ := h.start(cfg)
	if _, err := h.write(ctx, "first"); err != nil {
		t.Fatal(err)
	}
	h.readAll(1, time.Minute)
	// Even "first" may have been held for a moment.
	waits := r.Stats().InvisibleWaits

	pid, committed := h.commitWaiting("waiting")
	if _, err := h.write(ctx, "after"); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, time.Minute, "the relay to hold the invisible commit back", func() bool {
		return r.Stats().InvisibleWaits > waits
	})
	testkit.WaitFor(t, time.Minute, "the relay to report itself stuck", func() bool { return r.Stats().Stuck })
	if s := r.Stats(); !strings.Contains(s.StuckReason, "cannot see it yet") || s.Published != 1 {
		t.Fatalf("while held back: published %d (want 1, the first event), stuck reason %q", s.Published, s.StuckReason)
	}

	// Cancelling the wait makes the commit visible (it has committed locally).
	if _, err := h.pool.Exec(ctx, "SELECT pg_cancel_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-committed:
		if err != nil {
			t.Fatalf("the waiting commit: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the commit still waits a minute after its wait was cancelled")
	}
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
	// It was stuck, so held back for StuckAfter at least.
	if held := r.Stats().InvisibleWaitTime; held < cfg.StuckAfter {
		t.Fatalf("InvisibleWaitTime %s after a hold of %s or more", held, cfg.StuckAfter)
	}
}

// A relay that synchronous_standby_names names (or '*') may be the
// standby a commit waits for, and would wait for that commit forever: it
// stops and says so, whether the setting named it before it became active
// or names it after a reload while it holds a commit back.
func TestRelayRefusesToBeASynchronousStandby(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, standbys, reload string
	}{
		{name: "at start", standbys: "*"},
		{name: "after a reload", standbys: "nobody", reload: `"switchyard-relay"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := syncHarness(t)
			h.setStandbys(tc.standbys)
			ctx, cancel := context.WithCancel(context.Background())
			cfg := h.config()
			r, err := relay.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Prepare(ctx); err != nil {
				t.Fatal(err)
			}
			stopped := make(chan error, 1)
			go func() { stopped <- r.Run(ctx) }()
			t.Cleanup(func() {
				cancel()
				if err := <-stopped; err != nil && !errors.Is(err, relay.ErrSynchronousStandby) {
					t.Errorf("relay.Run: %v", err)
				}
			})
			if tc.reload != "" {
				h.commitWaiting("waiting")
				testkit.WaitFor(t, time.Minute, "the relay to hold the commit back", func() bool { return r.Stats().InvisibleWaits > 0 })
				h.setStandbys(tc.reload)
			}
			select {
			case err := <-stopped:
				stopped <- err // for the cleanup
				if !errors.Is(err, relay.ErrSynchronousStandby) {
					t.Fatalf("Run returned %v, want ErrSynchronousStandby", err)
				}
			case <-time.After(time.Minute):
				t.Fatal("the relay still runs a minute later")
			}
		})
	}
}

// A hold does not hide a broker failure: when the broker fails an event
// published before the held commit, the term ends at once (and the next
// one resends the event), rather than once the commit becomes visible,
// which may be never.
func TestBrokerFailureEndsAHold(t *testing.T) {
	t.Parallel()
	h := syncHarness(t)
	ctx := context.Background()
	r, _, _ := h.start(h.config())
	if _, err := h.write(ctx, "first"); err != nil {
		t.Fatal(err)
	}
	h.readAll(1, time.Minute)
	h.setStandbys("nobody")
	fail, held := h.bus.Kafka().FailProduce()
	t.Cleanup(fail)
	if _, err := h.write(ctx, "in flight"); err != nil {
		t.Fatal(err)
	}
	waits := r.Stats().InvisibleWaits
	h.commitWaiting("waiting")
	testkit.WaitFor(t, time.Minute, "the relay to hold the invisible commit back", func() bool {
		return r.Stats().InvisibleWaits > waits
	})
	testkit.WaitFor(t, time.Minute, "the broker to hold the event's produce request", func() bool { return held() > 0 })
	if s := r.Stats(); s.Failures != 0 {
		t.Fatalf("a term failed before the broker failed an event: %v", s.LastError)
	}

	fail()
	testkit.WaitFor(t, time.Minute, "the failed delivery to end the held term", func() bool { return r.Stats().Failures > 0 })
	if err := r.Stats().LastError; !strings.Contains(fmt.Sprint(err), "too large") {
		t.Fatalf("the term ended with %v, want the broker's MESSAGE_TOO_LARGE", err)
	}
	// The next term resends the failed event, and holds the commit again.
	got := h.readAll(2, time.Minute)
	if k := string(got.msgs[len(got.msgs)-1].Key); k != "in flight" {
		t.Fatalf("last published %q, want the resent \"in flight\"", k)
	}
}

// The gate's connection sits idle between transactions, where a server's
// idle_session_timeout or a firewall can end it: the relay opens a new one
// and goes on, rather than failing its term.
func TestGateReconnects(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "kafka", outbox.ModeCDC)
	ctx := context.Background()
	r, _, _ := h.start(h.config())
	if _, err := h.write(ctx, "before"); err != nil {
		t.Fatal(err)
	}
	h.readAll(1, time.Minute)
	gateConns := func() int {
		var n int
		if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = 'switchyard-relay-visibility' AND datname = current_database()`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := gateConns(); n != 1 {
		t.Fatalf("%d gate connections, want 1", n)
	}
	if _, err := h.pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE application_name = 'switchyard-relay-visibility' AND datname = current_database()`); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, time.Minute, "the gate's connection to be gone", func() bool { return gateConns() == 0 })

	if _, err := h.write(ctx, "after"); err != nil {
		t.Fatal(err)
	}
	h.readAll(2, time.Minute)
	if s := r.Stats(); s.Failures != 0 {
		t.Fatalf("%d failed terms (last: %v), want none: the gate should have reconnected", s.Failures, s.LastError)
	}
}
