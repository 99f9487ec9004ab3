package analytics

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/switchyard/switchyard/platform/migrate"
	"github.com/switchyard/switchyard/platform/testkit"
)

// Two transactions that meet the same order for the first time (the
// replay and the live group, both writing a rebuild's tables): the second
// waits for the first and reads its row, instead of both starting from
// nothing and the later commit overwriting the earlier's.
func TestLoadFactsSerializesAnOrdersFirstSight(t *testing.T) {
	testkit.SkipShort(t, "PostgreSQL")
	t.Parallel()
	ctx := context.Background()
	pool := testkit.Pool(t, testkit.Database(t))
	if _, err := migrate.Apply(ctx, pool, migrations); err != nil {
		t.Fatal(err)
	}
	id := uuid.NewString()
	orders := []*orderChange{{orderID: id}}

	first, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Rollback(ctx)
	if facts, err := loadFacts(ctx, first, "live", orders); err != nil || len(facts) != 0 {
		t.Fatalf("first sight: %v, %v; want no facts", facts, err)
	}

	type result struct {
		facts map[string]OrderFact
		err   error
	}
	second := make(chan result, 1)
	go func() {
		tx, err := pool.Begin(ctx)
		if err != nil {
			second <- result{err: err}
			return
		}
		defer tx.Rollback(ctx)
		facts, err := loadFacts(ctx, tx, "live", orders)
		second <- result{facts, err}
	}()
	testkit.WaitFor(t, time.Minute, "the second transaction to wait for the first's lock", func() bool {
		var waiting int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting)
		return err == nil && waiting == 1
	})
	select {
	case r := <-second:
		t.Fatalf("the second read the order (%v, %v) while the first had it", r.facts, r.err)
	default:
	}

	fact := OrderFact{CustomerID: uuid.NewString(), Confirmed: true, Lines: []Line{}, TotalMinor: 500}
	if err := saveFacts(ctx, first, "live", map[string]OrderFact{id: fact}); err != nil {
		t.Fatal(err)
	}
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-second
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got := r.facts[id]; !got.Confirmed || got.TotalMinor != 500 {
		t.Errorf("the second read %+v, want the first's confirmed order", got)
	}
}
