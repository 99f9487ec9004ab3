package orders

import (
	"context"
	"testing"
	"time"

	"github.com/switchyard/switchyard/platform/migrate"
	"github.com/switchyard/switchyard/platform/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// The age bound looks at the ageQuorum-th oldest order in progress: one
// order stuck for an hour does not refuse new ones, nor do ageQuorum-1,
// ageQuorum of them do. Terminal orders (no saga deadline) do not count.
func TestBacklogAgeCountsAQuorum(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testkit.Pool(t, testkit.Database(t))
	if _, err := migrate.Apply(ctx, pool, migrations); err != nil {
		t.Fatal(err)
	}
	add := func(n int, age time.Duration, pending bool) {
		t.Helper()
		deadline := "now() + interval '1 minute'"
		if !pending {
			deadline = "NULL"
		}
		if _, err := pool.Exec(ctx, `INSERT INTO orders (order_id, customer_id, status, saga_step, saga_deadline, create_time)
			SELECT gen_random_uuid(), gen_random_uuid(), 'PENDING', 'RESERVING', `+deadline+`, now() - make_interval(secs => $2)
			FROM generate_series(1, $1)`, n, age.Seconds()); err != nil {
			t.Fatal(err)
		}
	}
	o := Options{MaxPending: 1000, MaxPendingAge: time.Minute}
	admits := func() bool {
		t.Helper()
		b := newBacklog(o)
		if err := b.read(ctx, pool); err != nil {
			t.Fatal(err)
		}
		return b.admit() == nil
	}

	add(1, time.Hour, true)    // stuck
	add(20, time.Hour, false)  // long finished
	add(20, time.Second, true) // young
	if !admits() {
		t.Fatal("one stuck order refused new ones")
	}
	add(ageQuorum-2, time.Hour, true)
	if !admits() {
		t.Fatalf("%d stuck orders refused new ones", ageQuorum-1)
	}
	add(1, time.Hour, true)
	if admits() {
		t.Fatalf("%d orders waiting an hour did not refuse new ones", ageQuorum)
	}
	b := newBacklog(o)
	if err := b.read(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if b.waited < time.Hour || b.seen != 20+ageQuorum {
		t.Fatalf("read %d in progress, the tenth oldest %v old; want %d, an hour", b.seen, b.waited, 20+ageQuorum)
	}
}
