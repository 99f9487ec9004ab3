package migrate_test

import (
	"context"
	"slices"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchyard/switchyard/platform/migrate"
	"github.com/switchyard/switchyard/platform/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// Migrations apply once, in file-name order; a failing one is rolled back
// and reported.
func TestApply(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testkit.Pool(t, testkit.Database(t))
	fsys := fstest.MapFS{
		"migrations/002_more.sql": {Data: []byte(`ALTER TABLE t ADD COLUMN b int`)},
		"migrations/001_init.sql": {Data: []byte(`CREATE TABLE t (a int)`)},
	}
	applied, err := migrate.Apply(ctx, pool, fsys)
	if err != nil || !slices.Equal(applied, []string{"001_init", "002_more"}) {
		t.Fatalf("first Apply = %v, %v", applied, err)
	}
	if applied, err = migrate.Apply(ctx, pool, fsys); err != nil || len(applied) != 0 {
		t.Fatalf("second Apply = %v, %v; want nothing applied", applied, err)
	}
	fsys["migrations/003_bad.sql"] = &fstest.MapFile{Data: []byte(`ALTER TABLE t ADD COLUMN c int; SELECT no_such_function()`)}
	if _, err := migrate.Apply(ctx, pool, fsys); err == nil {
		t.Fatal("a failing migration was reported as applied")
	}
	var cols int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM information_schema.columns WHERE table_name = 't'`).Scan(&cols); err != nil || cols != 2 {
		t.Fatalf("table t has %d columns (%v), want 2: the failed migration must roll back", cols, err)
	}
}

// Replicas starting at the same moment on a fresh database each apply the
// migrations without an error, and every migration runs exactly once.
func TestApplyConcurrently(t *testing.T) {
	t.Parallel()
	url := testkit.Database(t)
	fsys := fstest.MapFS{
		"migrations/001_init.sql": {Data: []byte(`CREATE TABLE t (a int)`)},
		"migrations/002_more.sql": {Data: []byte(`ALTER TABLE t ADD COLUMN b int; CREATE TABLE u (a int)`)},
	}
	const replicas = 16
	pools := make([]*pgxpool.Pool, replicas)
	for i := range pools {
		pools[i] = testkit.Pool(t, url)
		if err := pools[i].Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	type result struct {
		applied []string
		err     error
	}
	results := make(chan result, replicas)
	start := make(chan struct{})
	for _, p := range pools {
		go func() {
			<-start
			applied, err := migrate.Apply(context.Background(), p, fsys)
			results <- result{applied, err}
		}()
	}
	close(start)
	counts := map[string]int{}
	for range pools {
		res := <-results
		if res.err != nil {
			t.Fatalf("a replica failed to migrate: %v", res.err)
		}
		for _, name := range res.applied {
			counts[name]++
		}
	}
	if counts["001_init"] != 1 || counts["002_more"] != 1 || len(counts) != 2 {
		t.Fatalf("migrations applied %v times, want each once", counts)
	}
}
