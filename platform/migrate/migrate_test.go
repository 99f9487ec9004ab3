package migrate_test

import (
	"context"
	"slices"
	"testing"
	"testing/fstest"

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
