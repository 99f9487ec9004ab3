package watch_test

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/watch"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// migrated returns a pool on a fresh database with the watch table.
func migrated(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool := testkit.Pool(t, testkit.Database(t))
	if err := watch.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

// running starts a hub on pool for channel until stop is called or the
// test ends; stop returns once Run has.
func running(t testing.TB, pool *pgxpool.Pool, channel string, limit *watch.Limit) (hub *watch.Hub, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	hub = watch.NewHub(pool, channel, limit, nil)
	done := make(chan struct{})
	go func() { defer close(done); _ = hub.Run(ctx) }() // nil: it retries until ctx ends
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return hub, stop
}

func subscribe(t *testing.T, hub *watch.Hub, key string) <-chan struct{} {
	t.Helper()
	ch, unsubscribe, err := hub.Subscribe(context.Background(), key, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unsubscribe)
	return ch
}

// listening returns a plain connection of pool that LISTENs on channel,
// closed when the test ends.
func listening(t *testing.T, pool *pgxpool.Pool, channel string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	c, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn := c.Hijack()
	t.Cleanup(func() { conn.Close(ctx) })
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	return conn
}

func woken(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal(what)
	}
}

// settle waits until the hub listens and has written its record of keys
// (and so delivered the wake-ups that follow a rewrite), then empties
// chans, so that a test sees only the wake-ups it causes.
func settle(t *testing.T, hub *watch.Hub, chans ...<-chan struct{}) {
	t.Helper()
	key := "settle-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	probe := subscribe(t, hub, key)
	for listening := false; !listening; {
		hub.Changed(key) // lost until the hub listens: try again
		select {
		case <-probe:
			listening = true
		case <-time.After(20 * time.Millisecond):
		}
	}
	testkit.WaitFor(t, 30*time.Second, "the hub to write its record of keys", hub.Idle)
	for _, ch := range chans {
		select {
		case <-ch:
		default:
		}
	}
}

// Only keys some hub follows are notified: a change to a key nobody
// follows sends nothing, and neither does one whose only follower died
// (its row expired). Notifications arrive in commit order, and a marker
// announced once the followed key's notification arrived comes after any
// sent with it, so the listener sees whatever else was sent first.
func TestOnlyFollowedKeysAreNotified(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrated(t)
	hub, _ := running(t, pool, "test_changes", nil)
	subscribe(t, hub, "followed")
	subscribe(t, hub, "marker")

	conn := listening(t, pool, "test_changes")
	if _, err := pool.Exec(ctx, `INSERT INTO watch_interest VALUES ('test_changes', 'dead', gen_random_uuid(), now() - interval '1 second')`); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	next := func() string {
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			t.Fatal(err)
		}
		return n.Payload
	}
	hub.Changed("nobody")
	hub.Changed("dead")
	hub.Changed("followed")
	for got := next(); got != "followed"; got = next() {
		t.Errorf("notification for %q: only followed keys are notified", got)
	}
	hub.Changed("marker")
	if got := next(); got != "marker" {
		t.Errorf("notification for %q, want the marker: only followed keys are notified", got)
	}
}

// The record of followed keys is kept in line: a stream's end deletes its
// key's row, and after the listening connection is lost and the table
// emptied (as a crash empties an unlogged table), the hub writes its keys
// again and notifications reach it.
func TestFollowedKeysAreRecordedAgainAfterReconnecting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrated(t)
	hub, _ := running(t, pool, "test_changes", nil)
	rows := func(key string) int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM watch_interest WHERE key = $1`, key).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	_, unsubscribe, err := hub.Subscribe(ctx, "brief", nil)
	if err != nil {
		t.Fatal(err)
	}
	if rows("brief") != 1 {
		t.Fatal("no row for a followed key once Subscribe returned")
	}
	unsubscribe()
	testkit.WaitFor(t, 10*time.Second, "the row of a key nobody follows to go", func() bool { return rows("brief") == 0 })

	kept := subscribe(t, hub, "kept")
	settle(t, hub, kept) // listening, so that there is a connection to lose
	if _, err := pool.Exec(ctx, `TRUNCATE watch_interest; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND datname = current_database()`); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the hub to record its key again", func() bool { return rows("kept") == 1 })
	settle(t, hub, kept)
	hub.Changed("kept")
	woken(t, kept, "a change after reconnecting did not wake the key's subscriber")
}

// Past its limit a hub refuses streams with ErrTooManyStreams, counts the
// refusal, and frees a place when a stream ends; the limit is shared by the
// hubs given it.
func TestLimitBoundsStreams(t *testing.T) {
	t.Parallel()
	limit := watch.NewLimit(2)
	pool := migrated(t)
	a, _ := running(t, pool, "a", limit)
	b, _ := running(t, pool, "b", limit)
	stop := make(chan struct{})
	ended := make(chan error, 2)
	started := make(chan struct{}, 2)
	follow := func(h *watch.Hub) {
		first := true
		ended <- h.Follow(context.Background(), "k", time.Hour, stop, func() (bool, error) {
			if first {
				first = false
				started <- struct{}{}
			}
			return false, nil
		})
	}
	go follow(a)
	go follow(b)
	<-started
	<-started
	if err := a.Follow(context.Background(), "k", time.Hour, stop, func() (bool, error) { return true, nil }); !errors.Is(err, watch.ErrTooManyStreams) {
		t.Fatalf("third stream: %v, want ErrTooManyStreams", err)
	}
	if limit.Active() != 2 || limit.Rejected() != 1 {
		t.Fatalf("active %d rejected %d, want 2 and 1", limit.Active(), limit.Rejected())
	}
	close(stop)
	for range 2 {
		if err := <-ended; !errors.Is(err, watch.ErrStopping) {
			t.Fatalf("stream ended with %v, want ErrStopping", err)
		}
	}
	if err := b.Follow(context.Background(), "k", time.Hour, nil, func() (bool, error) { return true, nil }); err != nil {
		t.Fatalf("stream after the others ended: %v", err)
	}
	if limit.Active() != 0 {
		t.Fatalf("active %d after every stream ended", limit.Active())
	}
}

// BenchmarkNotify commits single-row updates from 8 writers, each
// announcing its change after its commit ([watch.Hub.Changed]), to a key
// nobody follows and to a followed one: the difference is what sending
// the notifications costs the writers.
func BenchmarkNotify(b *testing.B) {
	for _, followed := range []bool{false, true} {
		name := "unfollowed"
		if followed {
			name = "followed"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			pool := migrated(b)
			if _, err := pool.Exec(ctx, `CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL); INSERT INTO counters SELECT g, 0 FROM generate_series(0, 999) g`); err != nil {
				b.Fatal(err)
			}
			hub, _ := running(b, pool, "bench_changes", nil)
			if followed {
				for i := range 1000 {
					_, unsubscribe, err := hub.Subscribe(ctx, strconv.Itoa(i), nil)
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(unsubscribe)
				}
			}
			var next atomic.Int64
			b.SetParallelism(4) // 8 writers on 2 cores
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id := int(next.Add(1) % 1000)
					if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
						_, err := tx.Exec(ctx, `UPDATE counters SET n = n + 1 WHERE id = $1`, id)
						return err
					}); err != nil {
						b.Error(err)
						return
					}
					hub.Changed(strconv.Itoa(id))
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "commits/s")
		})
	}
}

// A hub that stops deletes its rows, streams still open or not: writers
// stop notifying its keys at once rather than when the rows expire.
func TestStoppedHubDeletesItsRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrated(t)
	hub, stop := running(t, pool, "test_changes", nil)
	rows := func() int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM watch_interest`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	subscribe(t, hub, "open")
	subscribe(t, hub, "also-open")
	if n := rows(); n != 2 {
		t.Fatalf("%d rows for two followed keys", n)
	}
	stop() // returns once Run has, after deleting the rows
	if n := rows(); n != 0 {
		t.Fatalf("%d rows left by a hub that stopped", n)
	}
}

// atNotify counts the statements that call pg_notify (or contain match,
// when set), and holds each one while hold is set, until the test
// releases it.
type atNotify struct {
	match string
	sends atomic.Int64
	mu    sync.Mutex
	hold  chan struct{} // nil: let sends through
	held  chan struct{} // receives a value for each send held
}

func (a *atNotify) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if !strings.Contains(d.SQL, cmp.Or(a.match, "pg_notify")) {
		return ctx
	}
	a.sends.Add(1)
	a.mu.Lock()
	hold := a.hold
	a.mu.Unlock()
	if hold != nil {
		a.held <- struct{}{}
		<-hold
	}
	return ctx
}

func (*atNotify) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// holdSends makes the next sends wait; the returned function lets them go.
func (a *atNotify) holdSends() (release func()) {
	hold := make(chan struct{})
	a.mu.Lock()
	a.hold = hold
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		a.hold = nil
		a.mu.Unlock()
		close(hold)
	}
}

func (a *atNotify) waitHeld(t *testing.T) {
	t.Helper()
	select {
	case <-a.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the hub sent nothing")
	}
}

// tracedWriter runs a hub for test_changes on a pool of its own, on the
// database of pool, whose sends tracer counts and can hold; stop cancels
// its Run, which closes stopped when it returns. Each of configure may
// change the pool's settings first.
func tracedWriter(t *testing.T, pool *pgxpool.Pool, configure ...func(*pgxpool.Config)) (writer *watch.Hub, tracer *atNotify, stop func(), stopped <-chan struct{}) {
	t.Helper()
	tracer = &atNotify{held: make(chan struct{}, 1)}
	writer = watch.NewHub(tracedPool(t, pool, tracer, configure...), "test_changes", nil, nil)
	ctx, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	done := make(chan struct{})
	go func() { defer close(done); _ = writer.Run(ctx) }()
	return writer, tracer, stop, done
}

// tracedPool is a pool of its own on the database of pool whose
// statements tracer sees, closed when the test ends (after the cleanups
// of hubs started on it later, and once they release its connections);
// each of configure may change its settings first.
func tracedPool(t *testing.T, pool *pgxpool.Pool, tracer pgx.QueryTracer, configure ...func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg := pool.Config().Copy()
	cfg.ConnConfig.Tracer = tracer
	for _, c := range configure {
		c(cfg)
	}
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// A send that PostgreSQL refuses (here a key that is not valid UTF-8) is
// dropped, not retried: retried, it would fail with every key given after
// it, which would never be announced.
func TestRefusedAnnouncementIsDropped(t *testing.T) {
	t.Parallel()
	pool := migrated(t)
	follower, _ := running(t, pool, "test_changes", nil)
	k := subscribe(t, follower, "k")
	settle(t, follower, k)
	writer, tracer, _, _ := tracedWriter(t, pool)

	release := tracer.holdSends()
	writer.Changed("\xff")
	tracer.waitHeld(t) // "k" goes in the next send
	writer.Changed("k")
	release()
	woken(t, k, "a key given after a refused send was not announced")
}

// A send that fails for a reason a retry can pass (here its statement
// timeout, while another transaction locks the table of followed keys) is
// retried, and the key announced once the send goes through.
func TestFailedAnnouncementIsRetried(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrated(t)
	follower, _ := running(t, pool, "test_changes", nil)
	k := subscribe(t, follower, "k")
	settle(t, follower, k)
	writer, tracer, _, _ := tracedWriter(t, pool, func(cfg *pgxpool.Config) {
		cfg.ConnConfig.RuntimeParams["statement_timeout"] = "100ms"
	})

	lock, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(ctx)
	if _, err := lock.Exec(ctx, "LOCK TABLE watch_interest IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	writer.Changed("k")
	testkit.WaitFor(t, 30*time.Second, "the send to time out and be sent again", func() bool { return tracer.sends.Load() >= 2 })
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	woken(t, k, "a key whose send timed out was not announced once the send could go through")
}

// A hub whose listening connection broke writes its record of followed
// keys again, which wakes their streams, only once it listens again: a
// change in between is announced while nobody listens, and a wake-up
// before LISTEN would let the streams read before it and miss it.
func TestStreamsAreWokenOnceListeningAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrated(t)
	tracer := &atNotify{match: "LISTEN", held: make(chan struct{}, 1)}
	hub, _ := running(t, tracedPool(t, pool, tracer), "test_changes", nil)
	k := subscribe(t, hub, "k")
	settle(t, hub, k)

	release := sync.OnceFunc(tracer.holdSends())
	t.Cleanup(release) // a held LISTEN would keep the hub from stopping
	if _, err := pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN%'`); err != nil {
		t.Fatal(err)
	}
	tracer.waitHeld(t) // reconnected; its LISTEN waits
	testkit.WaitFor(t, 30*time.Second, "the hub to write its record of keys", hub.Idle)
	select {
	case <-k: // woken by a rewrite before LISTEN: the change below is missed
	default:
	}
	if _, err := pool.Exec(ctx, `SELECT pg_notify('test_changes', 'k')`); err != nil {
		t.Fatal(err)
	}
	release()
	woken(t, k, "a change made while the hub reconnected was not seen: its streams were not woken once it listened again")
}

// Hub.Changed announces a committed change to the streams following the
// key in any process (here, another hub on the database), not to keys
// nobody follows, and sends what was given while a send was in flight in
// one statement. What is pending when the hub stops is sent then, and what
// is given after it stopped (a consumer's last commits) is sent at once.
func TestChangedAnnouncesFollowedKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrated(t)
	follower, _ := running(t, pool, "test_changes", nil)
	const keys = 10
	subs := make([]<-chan struct{}, keys+4)
	for i := range subs {
		subs[i] = subscribe(t, follower, "k"+strconv.Itoa(i))
	}
	settle(t, follower, subs...)
	conn := listening(t, pool, "test_changes")

	writer, tracer, stopWriter, stopped := tracedWriter(t, pool)

	release := tracer.holdSends()
	writer.Changed("nobody")
	tracer.waitHeld(t) // the first send holds "nobody" alone
	for i := range keys {
		writer.Changed("k" + strconv.Itoa(i))
	}
	release()
	for i := range keys {
		woken(t, subs[i], "a followed key announced by another hub did not wake its stream")
	}
	if n := tracer.sends.Load(); n != 2 {
		t.Errorf("%d sends, want 2: the keys given while the first was in flight go in one", n)
	}

	// Stopping while a send is in flight: that send fails with the hub's
	// context, and what it held goes with the final send, as does what is
	// pending.
	release = tracer.holdSends()
	writer.Changed("k" + strconv.Itoa(keys))
	tracer.waitHeld(t)
	writer.Changed("k" + strconv.Itoa(keys+1))
	stopWriter()
	release()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the hub did not stop")
	}
	woken(t, subs[keys], "a key whose send the stop cut off was not announced")
	woken(t, subs[keys+1], "a key pending at the stop was not announced")
	writer.Changed("k" + strconv.Itoa(keys+2))
	woken(t, subs[keys+2], "a key given after the hub stopped was not announced")

	nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	got := map[string]int{}
	for range keys + 3 {
		n, err := conn.WaitForNotification(nctx)
		if err != nil {
			t.Fatal(err)
		}
		got[n.Payload]++
	}
	for k, n := range got {
		if k == "nobody" || n != 1 {
			t.Errorf("%q notified %d times, want once, and only followed keys", k, n)
		}
	}
	select {
	case <-subs[keys+3]:
		t.Error("a key nobody changed was woken")
	default:
	}
}

// A hub that loses a LISTEN connection that lasted reconnects after the
// shortest pause, however many it lost before; connections lost one after
// another as soon as they listen make the pause grow.
func TestReconnectPause(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		steady time.Duration
		pauses []string
	}{
		{"connections that lasted", 0, []string{"100ms", "100ms", "100ms", "100ms"}},
		{"connections lost at once", time.Hour, []string{"100ms", "200ms", "400ms", "800ms"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pool := migrated(t)
			ctx, cancel := context.WithCancel(context.Background())
			logs := &testkit.Logs{}
			hub := watch.NewHub(pool, "test_reconnect", nil, logs.Logger())
			hub.SetSteadyAfter(tt.steady)
			done := make(chan struct{})
			go func() { defer close(done); _ = hub.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })
			last := 0
			for i := range tt.pauses {
				var pid int
				testkit.WaitFor(t, time.Minute, "the hub to LISTEN", func() bool {
					err := pool.QueryRow(ctx, `SELECT pid FROM pg_stat_activity
						WHERE datname = current_database() AND query LIKE 'LISTEN%' AND state = 'idle' AND pid <> $1`, last).Scan(&pid)
					return err == nil
				})
				if _, err := pool.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
					t.Fatal(err)
				}
				last = pid
				testkit.WaitFor(t, time.Minute, "the hub to see its connection lost", func() bool {
					return strings.Count(logs.String(), "listening connection lost") > i
				})
			}
			var pauses []string
			for _, line := range strings.Split(logs.String(), "\n") {
				if _, rest, ok := strings.Cut(line, "listening connection lost"); ok {
					_, after, _ := strings.Cut(rest, "retry_in=")
					pauses = append(pauses, strings.Fields(after)[0])
				}
			}
			if !slices.Equal(pauses, tt.pauses) {
				t.Fatalf("pauses before reconnecting %v, want %v", pauses, tt.pauses)
			}
		})
	}
}
