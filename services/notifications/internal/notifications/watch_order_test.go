package notifications

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/migrate"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/watch"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// newTestServer returns the service's server on a fresh database with its
// migrations applied, and the database's pool; nothing consumes or serves.
func newTestServer(t *testing.T) (*server, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	pool := testkit.Pool(t, testkit.Database(t))
	if _, err := migrate.Apply(ctx, pool, migrations); err != nil {
		t.Fatal(err)
	}
	if err := watch.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	return &server{env: &service.Env{Pool: pool}, changes: watch.NewHub(pool, changeChannel, nil, nil)}, pool
}

// Two notifications for one customer written concurrently: the second
// waits for the first to commit, so a watcher that resumes after the
// highest seq it has sent never skips one. Without the per-customer lock
// the second commits first with the higher seq, the watcher moves past it,
// and the first is never sent.
func TestConcurrentNotificationsAreNotSkipped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, pool := newTestServer(t)
	customer := uuid.NewString()
	write := func(kind string) (commit func() error, err error) {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return nil, err
		}
		md := consumer.Metadata{Metadata: envelope.Metadata{ID: uuid.New()}}
		if err := s.notify(ctx, tx, md, customer, uuid.NewString(), kind, "s", "b"); err != nil {
			tx.Rollback(ctx)
			return nil, err
		}
		return func() error { return tx.Commit(ctx) }, nil
	}
	commitFirst, err := write(KindOrderConfirmed)
	if err != nil {
		t.Fatal(err)
	}
	secondDone := make(chan error, 1)
	go func() {
		commit, err := write(KindOrderCancelled)
		if err == nil {
			err = commit()
		}
		secondDone <- err
	}()
	// The watcher's view while the first is still open. Without the lock
	// the second commits at once; give it the chance.
	var after int64
	sent := map[string]bool{}
	look := func() {
		list, last, err := s.list(ctx, customer, after)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range list {
			sent[n.GetNotificationId()] = true
		}
		after = last
	}
	select {
	case err := <-secondDone:
		if err != nil {
			t.Fatal(err)
		}
		secondDone <- nil
	case <-time.After(2 * time.Second):
	}
	look()
	if err := commitFirst(); err != nil {
		t.Fatal(err)
	}
	if err := <-secondDone; err != nil {
		t.Fatal(err)
	}
	look()
	if len(sent) != 2 {
		t.Fatalf("the watcher saw %d of 2 notifications", len(sent))
	}
}
