package outbox_test

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/testkit"
)

// Replicas starting at the same moment all create the outbox (and any other
// platform table) without an error: each of them on its own connection, as
// separate processes would.
func TestEnsureTableConcurrently(t *testing.T) {
	t.Parallel()
	url := testkit.Database(t)
	const replicas = 16
	pools := make([]*pgxpool.Pool, replicas)
	for i := range pools {
		pools[i] = testkit.Pool(t, url)
		if err := pools[i].Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	start := make(chan struct{})
	errs := make(chan error, replicas)
	var wg sync.WaitGroup
	for _, p := range pools {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs <- outbox.Migrate(context.Background(), p)
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a replica failed to create the outbox: %v", err)
		}
	}
}
