package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/switchyard/switchyard/platform/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// fixture is a cache over a real Redis and a table of versioned rows in a
// real PostgreSQL database, the source of truth.
type fixture struct {
	redis *testkit.RedisServer
	pool  *pgxpool.Pool
	cache *Cache
	loads atomic.Int64
}

func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	f := &fixture{redis: testkit.Redis(t), pool: testkit.Pool(t, testkit.Database(t))}
	if _, err := f.pool.Exec(context.Background(), `CREATE TABLE items (key text PRIMARY KEY, version bigint NOT NULL, value text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	cfg.URL = f.redis.URL()
	cfg.Prefix = "test:"
	var err error
	if f.cache, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.cache.Close() })
	return f
}

// put changes a row in the database, raising its version, and returns it.
func (f *fixture) put(t *testing.T, key, value string) Entry {
	t.Helper()
	var v int64
	err := f.pool.QueryRow(context.Background(), `INSERT INTO items VALUES ($1, 1, $2)
		ON CONFLICT (key) DO UPDATE SET version = items.version + 1, value = excluded.value RETURNING version`, key, value).Scan(&v)
	if err != nil {
		t.Fatal(err)
	}
	return Entry{Version: v, Value: []byte(value)}
}

// loader reads key's row, counting the loads; before returning it calls
// pause (if set) with what it read.
func (f *fixture) loader(key string, pause func(Entry)) Loader {
	return func(ctx context.Context) (Entry, error) {
		f.loads.Add(1)
		var e Entry
		var s string
		err := f.pool.QueryRow(ctx, `SELECT version, value FROM items WHERE key = $1`, key).Scan(&e.Version, &s)
		if err != nil {
			return Entry{}, fmt.Errorf("load %s: %w", key, err)
		}
		e.Value = []byte(s)
		if pause != nil {
			pause(e)
		}
		return e, nil
	}
}

func (f *fixture) count(result string) float64 {
	return testutil.ToFloat64(f.cache.requests.WithLabelValues(result))
}

func (f *fixture) peek(t *testing.T, key string) Entry {
	t.Helper()
	e, ok, err := f.cache.Peek(context.Background(), key)
	if err != nil || !ok {
		t.Fatalf("peek %s: ok=%v, %v", key, ok, err)
	}
	return e
}

// A fill that read version n and is delayed until after version n+1 was
// written must leave n+1 cached: the scripted race of a naive read-through
// cache, where the stale fill lands last and stays until it expires.
func TestDelayedFillNeverOverwritesNewer(t *testing.T) {
	f := newFixture(t, Config{})
	ctx := context.Background()
	f.put(t, "sku-1", "ten")

	read := make(chan Entry, 1)
	release := make(chan struct{})
	got := make(chan Entry, 1)
	go func() {
		e, err := f.cache.Get(ctx, "sku-1", f.loader("sku-1", func(e Entry) { read <- e; <-release }))
		if err != nil {
			t.Error(err)
		}
		got <- e
	}()
	old := <-read // the fill has read version n and is held
	if old.Version != 1 {
		t.Fatalf("loaded version %d, want 1", old.Version)
	}
	newer := f.put(t, "sku-1", "nine") // version n+1 commits...
	if wrote, err := f.cache.Set(ctx, "sku-1", newer); err != nil || !wrote {
		t.Fatalf("update to version %d: wrote=%v, %v", newer.Version, wrote, err) // ...and reaches the cache
	}
	close(release) // now the fill of version n lands
	if e := <-got; e.Version != 1 {
		t.Fatalf("the delayed reader got version %d, want the 1 it read", e.Version)
	}
	// The fill runs after the callers are answered: wait until it has.
	testkit.WaitFor(t, 10*time.Second, "the fill to finish", func() bool { return f.cache.Loading() == 0 })
	if e := f.peek(t, "sku-1"); e.Version != newer.Version || string(e.Value) != "nine" {
		t.Fatalf("cached version %d %q after the delayed fill, want %d %q", e.Version, e.Value, newer.Version, "nine")
	}
	e, err := f.cache.Get(ctx, "sku-1", f.loader("sku-1", nil))
	if err != nil || e.Version != newer.Version {
		t.Fatalf("Get after the race = version %d, %v; want %d", e.Version, err, newer.Version)
	}
}

// Set writes only a newer version, whatever order updates arrive in.
func TestSetKeepsTheNewestVersion(t *testing.T) {
	f := newFixture(t, Config{})
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		versions  []int64 // written in this order
		wantWrote []bool
		want      int64
	}{
		{"in order", []int64{1, 2, 3}, []bool{true, true, true}, 3},
		{"late update", []int64{1, 3, 2}, []bool{true, true, false}, 3},
		{"replayed", []int64{5, 5, 4, 1}, []bool{true, false, false, false}, 5},
		{"big versions", []int64{1 << 52, 1<<52 + 1, 1 << 52}, []bool{true, true, false}, 1<<52 + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, v := range tc.versions {
				wrote, err := f.cache.Set(ctx, tc.name, Entry{Version: v, Value: []byte(strconv.FormatInt(v, 10))})
				if err != nil || wrote != tc.wantWrote[i] {
					t.Fatalf("Set version %d: wrote=%v, %v; want wrote=%v", v, wrote, err, tc.wantWrote[i])
				}
			}
			if e := f.peek(t, tc.name); e.Version != tc.want || string(e.Value) != strconv.FormatInt(tc.want, 10) {
				t.Fatalf("cached %d %q, want %d", e.Version, e.Value, tc.want)
			}
		})
	}
}

// ApplyAll writes each key's entry only if it is newer than the cached
// one, keys independently of each other in one call, and records the age
// of each entry it wrote and of none it skipped.
func TestApplyAllWritesEachKeyIfNewer(t *testing.T) {
	f := newFixture(t, Config{})
	ctx := context.Background()
	for _, k := range []string{"a", "b"} {
		if _, err := f.cache.Set(ctx, k, Entry{Version: 5, Value: []byte("5")}); err != nil {
			t.Fatal(err)
		}
	}
	entry := func(v int64) Entry { return Entry{Version: v, Value: []byte(strconv.FormatInt(v, 10))} }
	n, err := f.cache.ApplyAll(ctx, []Update{
		{"a", entry(6)}, // newer: written
		{"b", entry(4)}, // older: skipped
		{"c", entry(1)}, // absent: written
		{"c", entry(2)}, // the same key again, newer: written
		{"c", entry(2)}, // and the same version again: skipped
	}, time.Now().Add(-time.Second))
	if err != nil || n != 3 {
		t.Fatalf("ApplyAll = %d, %v; want 3 written", n, err)
	}
	for k, want := range map[string]int64{"a": 6, "b": 5, "c": 2} {
		if e := f.peek(t, k); e.Version != want || string(e.Value) != strconv.FormatInt(want, 10) {
			t.Errorf("%s cached %d %q, want %d", k, e.Version, e.Value, want)
		}
	}
	if got := testutil.CollectAndCount(f.cache.age); got != 1 {
		t.Fatalf("age series: %d, want 1", got)
	}
	var m dto.Metric
	if err := f.cache.age.Write(&m); err != nil {
		t.Fatal(err)
	}
	if h := m.GetHistogram(); h.GetSampleCount() != 3 || h.GetSampleSum() < 3 {
		t.Fatalf("age histogram: %d samples summing to %.3fs, want 3 of at least 1s each", h.GetSampleCount(), h.GetSampleSum())
	}
	if n, err := f.cache.ApplyAll(ctx, nil, time.Now()); n != 0 || err != nil {
		t.Fatalf("ApplyAll of nothing = %d, %v", n, err)
	}
}

// 1,000 concurrent misses of one key cause one load. The load is held
// until every reader is counted as a miss, which the cache does while the
// reader is registered with the load in progress, so no reader can start a
// second one.
func TestConcurrentMissesShareOneLoad(t *testing.T) {
	f := newFixture(t, Config{})
	f.put(t, "hot", "42")
	const readers = 1000
	release := make(chan struct{})
	load := f.loader("hot", func(Entry) { <-release })
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, err := f.cache.Get(context.Background(), "hot", load)
			if err != nil || string(e.Value) != "42" {
				failed.Add(1)
			}
		}()
	}
	// A reader whose Redis read overran its budget on a busy machine is
	// counted as an error instead of a miss; it joins the load all the same.
	testkit.WaitFor(t, time.Minute, "every reader to join the load", func() bool {
		return f.count(ResultMiss)+f.count(ResultError) == readers
	})
	close(release)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d reads failed", n)
	}
	if n := f.loads.Load(); n != 1 {
		t.Fatalf("%d concurrent misses caused %d loads, want 1", readers, n)
	}
	testkit.WaitFor(t, 10*time.Second, "the fill", func() bool {
		_, ok, err := f.cache.Peek(context.Background(), "hot")
		return ok && err == nil
	})
	// After an overrun the cache skips Redis for a moment: wait for a hit.
	testkit.WaitFor(t, 10*time.Second, "a hit after the fill", func() bool {
		before := f.count(ResultHit)
		_, err := f.cache.Get(context.Background(), "hot", load)
		return err == nil && f.count(ResultHit) == before+1
	})
}

// Redis killed or paused (slow): every read still succeeds from the
// database within a bounded time, counted as an error; back: hits resume
// without a restart.
func TestReadsSurviveRedis(t *testing.T) {
	for _, tc := range []struct {
		name       string
		down, heal func(t *testing.T, f *fixture)
	}{
		{"killed", func(t *testing.T, f *fixture) { f.redis.Stop() }, func(t *testing.T, f *fixture) {
			if err := f.redis.Start(); err != nil {
				t.Fatal(err)
			}
		}},
		{"slow", func(t *testing.T, f *fixture) {
			// Every command waits: Redis answers, but far too late.
			if err := f.redis.Client(t).Do(context.Background(), "CLIENT", "PAUSE", "3000", "ALL").Err(); err != nil {
				t.Fatal(err)
			}
		}, func(t *testing.T, f *fixture) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Config{Timeout: 50 * time.Millisecond, Cooldown: 200 * time.Millisecond})
			ctx := context.Background()
			want := f.put(t, "k", "v1")
			load := f.loader("k", nil)
			testkit.WaitFor(t, 10*time.Second, "a hit", func() bool {
				e, err := f.cache.Get(ctx, "k", load)
				return err == nil && e.Version == want.Version && f.count(ResultHit) > 0
			})
			tc.down(t, f)
			before := f.count(ResultError)
			for i := range 50 {
				start := time.Now()
				e, err := f.cache.Get(ctx, "k", load)
				if err != nil || e.Version != want.Version {
					t.Fatalf("read %d with Redis %s: version %d, %v", i, tc.name, e.Version, err)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Fatalf("read %d took %s: the timeout does not bound it", i, d)
				}
			}
			if f.count(ResultError) <= before {
				t.Fatalf("no read was counted as an error with Redis %s", tc.name)
			}
			tc.heal(t, f)
			hits := f.count(ResultHit)
			testkit.WaitFor(t, time.Minute, "hits to resume", func() bool {
				e, err := f.cache.Get(ctx, "k", load)
				return err == nil && e.Version == want.Version && f.count(ResultHit) > hits
			})
		})
	}
}

// A load's error reaches the caller and nothing is cached.
func TestLoadErrorIsReturned(t *testing.T) {
	f := newFixture(t, Config{})
	_, err := f.cache.Get(context.Background(), "absent", f.loader("absent", nil))
	if !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("Get of a missing row: %v, want pgx.ErrNoRows", err)
	}
	if _, ok, _ := f.cache.Peek(context.Background(), "absent"); ok {
		t.Fatal("a failed load was cached")
	}
}

// One failed Redis call (a timeout on a busy machine, say) does not send
// the next reads to the database; SkipAfter failures in a row do, for the
// cooldown. A key of the wrong type makes Redis fail one read on demand.
func TestRedisSkippedOnlyAfterFailuresInARow(t *testing.T) {
	f := newFixture(t, Config{SkipAfter: 3, Cooldown: time.Hour})
	ctx := context.Background()
	f.put(t, "good", "v")
	if err := f.redis.Client(t).Set(ctx, "test:bad", "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	good, bad := f.loader("good", nil), func(context.Context) (Entry, error) { return Entry{Version: 1, Value: []byte("x")}, nil }
	if _, err := f.cache.Get(ctx, "good", good); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the fill", func() bool {
		_, ok, err := f.cache.Peek(ctx, "good")
		return ok && err == nil
	})
	for round := range 2 { // a success in between starts the count again
		for range 2 {
			if _, err := f.cache.Get(ctx, "bad", bad); err != nil {
				t.Fatal(err)
			}
		}
		hits := f.count(ResultHit)
		if _, err := f.cache.Get(ctx, "good", good); err != nil || f.count(ResultHit) != hits+1 {
			t.Fatalf("round %d: after 2 failures in a row the next read was not served by Redis (%v)", round, err)
		}
	}
	for range 3 {
		if _, err := f.cache.Get(ctx, "bad", bad); err != nil {
			t.Fatal(err)
		}
	}
	errs := f.count(ResultError)
	if _, err := f.cache.Get(ctx, "good", good); err != nil || f.count(ResultError) != errs+1 {
		t.Fatalf("after 3 failures in a row the next read was not sent to the database (%v)", err)
	}
}

// While Redis is failing, a read after a write of a newer version does not
// share a load that began before the write: whoever wrote reads its write.
func TestReadAfterWriteDoesNotShareAnOlderLoad(t *testing.T) {
	f := newFixture(t, Config{})
	ctx := context.Background()
	f.put(t, "k", "old")
	f.redis.Stop()
	read, release := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	go func() {
		_, _ = f.cache.Get(ctx, "k", f.loader("k", func(Entry) { close(read); <-release }))
	}()
	<-read // a load has read the old row and is still in progress
	newer := f.put(t, "k", "new")
	_, _ = f.cache.Set(ctx, "k", newer) // Redis is down: only the process learns of it
	got := make(chan Entry, 1)
	go func() {
		e, err := f.cache.Get(ctx, "k", f.loader("k", nil))
		if err != nil {
			t.Error(err)
		}
		got <- e
	}()
	select {
	case e := <-got:
		if e.Version != newer.Version {
			t.Fatalf("read after the write got version %d, want %d", e.Version, newer.Version)
		}
	case <-time.After(time.Minute):
		t.Fatal("the read after the write waited for the load that began before it")
	}
	close(release)
}

// cached puts a row with value in the database and waits until a read has
// filled it into Redis.
func (f *fixture) cached(t *testing.T, key, value string) {
	t.Helper()
	f.put(t, key, value)
	testkit.WaitFor(t, time.Minute, "the fill", func() bool {
		if _, err := f.cache.Get(context.Background(), key, f.loader(key, nil)); err != nil {
			t.Fatal(err)
		}
		_, ok, err := f.cache.Peek(context.Background(), key)
		return ok && err == nil
	})
}

// A write that Redis refused leaves the older version there; this
// process reads the key from the database until a write of its version
// has gone through (here, the fill of the read after Redis takes writes
// again), so the writer reads its write even though Redis answers reads.
func TestRefusedWriteIsNotReadBackOld(t *testing.T) {
	// A generous timeout: a slow call on a busy machine must not pass for
	// a refusal.
	f := newFixture(t, Config{SkipAfter: 100, Timeout: 2 * time.Second})
	ctx := context.Background()
	f.cached(t, "k", "old")
	rdb := f.redis.Client(t)
	if err := rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil { // noeviction: writes refused, reads answered
		t.Fatal(err)
	}
	newer := f.put(t, "k", "new")
	if _, err := f.cache.Set(ctx, "k", newer); err == nil {
		t.Fatal("Set succeeded on a Redis refusing writes")
	}
	for range 2 {
		e, err := f.cache.Get(ctx, "k", f.loader("k", nil))
		if err != nil || e.Version != newer.Version {
			t.Fatalf("read after a refused write: version %d (%v), want %d, not Redis's older one", e.Version, err, newer.Version)
		}
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	// Reads refill it (a read may first share a load whose fill Redis
	// refused), and then Redis serves them again.
	testkit.WaitFor(t, 10*time.Second, "reads to be served by Redis again", func() bool {
		hits := f.count(ResultHit)
		e, err := f.cache.Get(ctx, "k", f.loader("k", nil))
		if err != nil || e.Version != newer.Version {
			t.Fatalf("read after Redis takes writes again: version %d (%v), want %d", e.Version, err, newer.Version)
		}
		return f.count(ResultHit) == hits+1
	})
	if got := f.peek(t, "k").Version; got != newer.Version {
		t.Fatalf("Redis holds version %d, want %d", got, newer.Version)
	}
}

// While Redis is skipped after failures a write is not tried (no timeout
// to wait out) but remembered: once Redis is tried again, the older
// version it holds is not served.
func TestWriteWhileCoolingDown(t *testing.T) {
	f := newFixture(t, Config{SkipAfter: 1, Cooldown: time.Hour, Timeout: 2 * time.Second})
	ctx := context.Background()
	f.cached(t, "k", "old")
	// One failure (a key of the wrong type) starts the cooldown.
	if err := f.redis.Client(t).Set(ctx, "test:bad", "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cache.Get(ctx, "bad", func(context.Context) (Entry, error) { return Entry{Version: 1}, nil }); err != nil {
		t.Fatal(err)
	}
	newer := f.put(t, "k", "new")
	if _, err := f.cache.Set(ctx, "k", newer); !errors.Is(err, ErrCoolingDown) {
		t.Fatalf("Set while cooling down: %v, want %v", err, ErrCoolingDown)
	}
	if f.peek(t, "k").Version == newer.Version {
		t.Fatal("Set while cooling down wrote to Redis")
	}
	f.cache.downUntil.Store(0) // the cooldown is over
	if e, err := f.cache.Get(ctx, "k", f.loader("k", nil)); err != nil || e.Version != newer.Version {
		t.Fatalf("read after the cooldown: version %d (%v), want %d, not Redis's older one", e.Version, err, newer.Version)
	}
}

// The stale marks' bookkeeping, with no Redis: a mark holds until a write
// of its version or newer, an older write leaves it, past MaxStale every
// key counts as stale, and marks lapse after twice TTL.
func TestStaleMarks(t *testing.T) {
	t.Parallel()
	newCache := func(cfg Config) *Cache {
		cfg.URL = "redis://127.0.0.1:1/0" // never contacted
		c, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	up := func(key string, v int64) []Update { return []Update{{Key: key, Entry: Entry{Version: v}}} }

	c := newCache(Config{MaxStale: 2})
	c.markStale(up("a", 5))
	c.clearStale(up("a", 4))
	if !c.isStale("a") || c.isStale("b") {
		t.Fatal("after a failed write of a@5 and a write of a@4: want a stale, b not")
	}
	c.clearStale(up("a", 5))
	if c.isStale("a") {
		t.Fatal("a write of a@5 left a stale")
	}
	c.markStale(append(up("a", 1), up("b", 1)...))
	c.markStale(up("c", 1))
	if !c.isStale("never-written") {
		t.Fatal("past MaxStale marks: want every key stale")
	}

	c = newCache(Config{TTL: time.Millisecond})
	c.markStale(up("a", 1))
	time.Sleep(3 * time.Millisecond) // past twice TTL
	if c.isStale("a") || c.staleUntil.Load() > time.Now().UnixNano() {
		t.Fatal("a mark older than twice TTL still counts")
	}
}
