package idempotency_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/idempotency"
	"github.com/switchyard/switchyard/platform/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// keysPool returns a pool on a fresh database with the idempotency_keys
// table.
func keysPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool := testkit.Pool(t, testkit.Database(t))
	if err := idempotency.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

// Ten concurrent calls with one key run the operation once and all get its
// response; the same key with another request is refused; a failed first
// attempt leaves the key free.
func TestConcurrentSameKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := keysPool(t)
	var runs atomic.Int32
	do := func(key string, req int64, fail bool) (string, bool, error) {
		var out *wrapperspb.StringValue
		var replayed bool
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			var err error
			out, replayed, err = idempotency.Do(ctx, tx, "Test", key, wrapperspb.Int64(req), func() (*wrapperspb.StringValue, error) {
				if fail {
					return nil, errors.New("first attempt fails")
				}
				n := runs.Add(1)
				return wrapperspb.String("run " + string(rune('0'+n))), nil
			})
			return err
		})
		return out.GetValue(), replayed, err
	}
	if _, _, err := do("k", 1, true); err == nil {
		t.Fatal("failing operation reported success")
	}
	var wg sync.WaitGroup
	results := make([]string, 10)
	replays := atomic.Int32{}
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, replayed, err := do("k", 1, false)
			if err != nil {
				t.Error(err)
			}
			if replayed {
				replays.Add(1)
			}
			results[i] = v
		}()
	}
	wg.Wait()
	if runs.Load() != 1 || replays.Load() != 9 {
		t.Fatalf("operation ran %d times with %d replays, want 1 and 9", runs.Load(), replays.Load())
	}
	for _, r := range results {
		if r != "run 1" {
			t.Fatalf("responses %v, want all the first run's", results)
		}
	}
	if _, _, err := do("k", 2, false); !errors.Is(err, idempotency.ErrKeyReused) {
		t.Fatalf("same key, other request: %v, want ErrKeyReused", err)
	}
}

// Keys older than the retention are pruned; recent ones stay and still
// replay.
func TestPrune(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := keysPool(t)
	if _, err := pool.Exec(ctx, `INSERT INTO idempotency_keys (scope, key, request_hash, created_at) VALUES
		('Test', 'old', '\x00', now() - interval '2 days'), ('Test', 'new', '\x00', now())`); err != nil {
		t.Fatal(err)
	}
	n, err := idempotency.Prune(ctx, pool, 24*time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want the one old key", n, err)
	}
	var left []string
	rows, _ := pool.Query(ctx, `SELECT key FROM idempotency_keys`)
	for rows.Next() {
		var k string
		_ = rows.Scan(&k)
		left = append(left, k)
	}
	if len(left) != 1 || left[0] != "new" {
		t.Fatalf("keys left %v, want [new]", left)
	}
}

// Lookup answers from committed keys only and writes nothing: an unused
// key or one whose first call has not committed is not found (and does not
// wait for it), a committed one replays, another request under it is
// ErrKeyReused.
func TestLookup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := keysPool(t)
	lookup := func(key string, req int64) (string, bool, error) {
		resp, found, err := idempotency.Lookup[*wrapperspb.StringValue](ctx, pool, "Test", key, wrapperspb.Int64(req))
		return resp.GetValue(), found, err
	}
	store := func(tx pgx.Tx, key string) {
		t.Helper()
		if _, _, err := idempotency.Do(ctx, tx, "Test", key, wrapperspb.Int64(1), func() (*wrapperspb.StringValue, error) {
			return wrapperspb.String("done " + key), nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { store(tx, "committed"); return nil }); err != nil {
		t.Fatal(err)
	}
	inFlight, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer inFlight.Rollback(ctx)
	store(inFlight, "in flight")

	for _, c := range []struct {
		key       string
		req       int64
		want      string
		wantFound bool
		wantErr   error
	}{
		{"unused", 1, "", false, nil},
		{"", 1, "", false, nil},
		{"in flight", 1, "", false, nil},
		{"committed", 1, "done committed", true, nil},
		{"committed", 2, "", false, idempotency.ErrKeyReused},
	} {
		got, found, err := lookup(c.key, c.req)
		if got != c.want || found != c.wantFound || !errors.Is(err, c.wantErr) {
			t.Errorf("Lookup(%q, %d) = %q, %v, %v; want %q, %v, %v", c.key, c.req, got, found, err, c.want, c.wantFound, c.wantErr)
		}
	}
	var keys int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM idempotency_keys`).Scan(&keys); err != nil || keys != 1 {
		t.Fatalf("%d keys committed (%v), want only the one stored: Lookup wrote", keys, err)
	}
}
