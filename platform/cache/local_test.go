package cache

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/platform/testkit"
)

// The bookkeeping of the process's entries, without Redis: nothing read
// before an invalidation is kept after it, nothing is served while
// invalidations do not flow, and the bound holds.
func TestLocalKeepsOnlyWhatNoInvalidationOvertook(t *testing.T) {
	t.Parallel()
	e := Entry{Version: 1, Value: []byte("v")}
	for _, tc := range []struct {
		name string
		run  func(l *local)
		want bool // whether "a" is served afterwards
	}{
		{"kept", func(l *local) { l.put("a", e, l.generation()) }, true},
		{"read before an invalidation of it", func(l *local) {
			g := l.generation()
			l.drop("p:a")
			l.put("a", e, g)
		}, false},
		{"read before an invalidation of another key", func(l *local) {
			g := l.generation()
			l.drop("p:b")
			l.put("a", e, g)
		}, false}, // the generation is the process's, not the key's: safe, if not thrifty
		{"invalidated after", func(l *local) {
			l.put("a", e, l.generation())
			l.drop("p:a")
		}, false},
		{"reset after", func(l *local) {
			l.put("a", e, l.generation())
			l.reset()
		}, false},
		{"invalidations stopped", func(l *local) {
			l.put("a", e, l.generation())
			l.live.Store(false)
		}, false},
		{"expired", func(l *local) {
			l.ttl = -time.Second
			l.put("a", e, l.generation())
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLocal("p:", time.Hour, 10)
			l.live.Store(true)
			tc.run(l)
			if _, ok := l.get("a"); ok != tc.want {
				t.Fatalf("served=%v, want %v", ok, tc.want)
			}
		})
	}
	l := newLocal("p:", time.Hour, 10)
	l.live.Store(true)
	for i := range 25 {
		l.put(strconv.Itoa(i), e, l.generation())
		if n := l.size(); n > 10 {
			t.Fatalf("%d entries kept, bound 10", n)
		}
	}
	var none *local // Config.Local off
	none.put("a", e, none.generation())
	none.drop("p:a")
	if _, ok := none.get("a"); ok {
		t.Fatal("a nil local served an entry")
	}
}

// hmgets returns how many HMGETs Redis has answered: a read served from
// the process sends none.
func (f *fixture) hmgets(t *testing.T) int {
	t.Helper()
	info, err := f.redis.Client(t).Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_hmget:calls="); ok {
			n, err := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	return 0
}

// localFixture is a fixture whose cache keeps entries in the process, and
// whose entries outlive the test: only an invalidation removes them.
func localFixture(t *testing.T) *fixture {
	f := newFixture(t, Config{Local: true, LocalTTL: time.Hour, LocalPing: 100 * time.Millisecond})
	testkit.WaitFor(t, 10*time.Second, "invalidations to flow", f.cache.local.live.Load)
	return f
}

// size returns how many entries the process holds.
func (l *local) size() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.entries)
}

// kept reports whether the process holds an entry for key.
func (l *local) kept(key string) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	_, ok := l.entries[key]
	return ok
}

// settle returns once every report of a change Redis made so far has
// reached f's cache: it keeps an entry for a fresh key, has other change
// that key, and waits for the entry to go. Reports arrive in order, so the
// earlier ones have arrived too.
func (f *fixture) settle(t *testing.T, other *Cache) {
	t.Helper()
	key := "sync-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	l := f.cache.local
	testkit.WaitFor(t, 10*time.Second, "an entry kept for "+key, func() bool {
		l.put(key, Entry{Version: 1}, l.generation()) // refused while reports still come in
		return l.kept(key)
	})
	if _, err := other.Set(context.Background(), key, Entry{Version: 1, Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the report of "+key, func() bool { return !l.kept(key) })
}

// A read found in Redis is then served from the process, with no round
// trip, until Redis reports a change of the key, made by another process
// (at once when made through this cache).
func TestLocalServesUntilTheKeyChanges(t *testing.T) {
	f := localFixture(t)
	other, err := New(Config{URL: f.redis.URL(), Prefix: "test:"}) // another replica
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx := context.Background()
	load := f.loader("k", nil)
	get := func() Entry {
		t.Helper()
		e, err := f.cache.Get(ctx, "k", load)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	v1 := f.put(t, "k", "one")
	if _, err := other.Set(ctx, "k", v1); err != nil {
		t.Fatal(err)
	}
	f.settle(t, other) // no report left to drop what the next read keeps
	if e := get(); e.Version != v1.Version || !f.cache.local.kept("k") {
		t.Fatalf("version %d, kept %v; want %d read from Redis and kept", e.Version, f.cache.local.kept("k"), v1.Version)
	}
	calls := f.hmgets(t)
	for range 100 {
		if e := get(); e.Version != v1.Version {
			t.Fatalf("version %d, want %d", e.Version, v1.Version)
		}
	}
	if n := f.hmgets(t) - calls; n != 0 {
		t.Fatalf("100 reads of a kept entry sent %d HMGETs to Redis, want 0", n)
	}

	v2 := f.put(t, "k", "two")
	if _, err := other.Set(ctx, "k", v2); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the other process's change to be read", func() bool { return get().Version == v2.Version })

	v3 := f.put(t, "k", "three")
	if _, err := f.cache.Set(ctx, "k", v3); err != nil {
		t.Fatal(err)
	}
	if e := get(); e.Version != v3.Version {
		t.Fatalf("read after this process's own write: version %d, want %d", e.Version, v3.Version)
	}

	// A flush reports no keys: everything is forgotten.
	f.settle(t, other)
	if e := get(); e.Version != v3.Version || !f.cache.local.kept("k") {
		t.Fatalf("before the flush: version %d, kept %v; want %d kept", e.Version, f.cache.local.kept("k"), v3.Version)
	}
	if err := f.redis.Client(t).FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the flush to empty the process", func() bool { return f.cache.local.size() == 0 })
}

// Without the connection that brings invalidations nothing is served from
// the process; when Redis is back, entries are kept again.
func TestLocalForgetsWhileRedisIsAway(t *testing.T) {
	f := localFixture(t)
	ctx := context.Background()
	want := f.put(t, "k", "v")
	load := f.loader("k", nil)
	testkit.WaitFor(t, 10*time.Second, "an entry kept in the process", func() bool {
		_, err := f.cache.Get(ctx, "k", load)
		return err == nil && f.cache.local.size() == 1
	})
	f.redis.Stop()
	testkit.WaitFor(t, 10*time.Second, "the process to forget", func() bool {
		return !f.cache.local.live.Load() && f.cache.local.size() == 0
	})
	loads := f.loads.Load()
	if e, err := f.cache.Get(ctx, "k", load); err != nil || e.Version != want.Version {
		t.Fatalf("read with Redis away: version %d, %v", e.Version, err)
	}
	if f.loads.Load() == loads {
		t.Fatal("a read with Redis away did not go to the source of truth")
	}
	if err := f.redis.Start(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, time.Minute, "entries to be kept again", func() bool {
		e, err := f.cache.Get(ctx, "k", load)
		return err == nil && e.Version == want.Version && f.cache.local.live.Load() && f.cache.local.size() == 1
	})
}

// Close returns while invalidations keep arriving: the listener does not
// wait for a quiet connection to notice it is asked to stop.
func TestCloseWhileInvalidationsFlow(t *testing.T) {
	f := localFixture(t)
	other, err := New(Config{URL: f.redis.URL(), Prefix: "test:"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	stop := make(chan struct{})
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		for v := int64(1); ; v++ {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = other.Set(context.Background(), "k", Entry{Version: v, Value: []byte("v")})
		}
	}()
	defer func() { close(stop); <-writing }()
	closed := make(chan error, 1)
	go func() { closed <- f.cache.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second): // a hang, not a measurement
		t.Fatal("Close did not return while invalidations flowed")
	}
}
