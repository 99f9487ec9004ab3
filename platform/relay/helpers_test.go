package relay_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/relay"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/transport/transporttest"
)

func TestMain(m *testing.M) {
	if runHelperProcess() {
		return
	}
	testkit.Main(m)
}

const (
	prefix        = "test."
	aggregateType = "account"
	topic         = prefix + aggregateType
)

// harness is one database with an outbox, a broker and a writer. Each event
// bumps a per-aggregate version under a row lock, so the version is the
// aggregate's commit order and the payload carries it.
type harness struct {
	t      testing.TB
	mode   outbox.Mode
	url    string
	pool   *pgxpool.Pool
	bus    *transporttest.Bus
	writer *outbox.Writer
}

// eachSetup runs test for every transport and relay mode, in parallel.
func eachSetup(t *testing.T, test func(t *testing.T, h *harness)) {
	t.Parallel()
	for _, kind := range transporttest.Kinds {
		for _, mode := range modes {
			t.Run(kind+"/"+string(mode), func(t *testing.T) {
				t.Parallel()
				test(t, newHarness(t, kind, mode))
			})
		}
	}
}

var modes = []outbox.Mode{outbox.ModeCDC, outbox.ModePoll}

func newHarness(t testing.TB, kind string, mode outbox.Mode) *harness {
	t.Helper()
	return newHarnessOn(t, testkit.Database(t), transporttest.New(t, kind, 8), mode)
}

// newHarnessOn is newHarness on a database and bus of the test's choosing.
func newHarnessOn(t testing.TB, url string, bus *transporttest.Bus, mode outbox.Mode) *harness {
	t.Helper()
	h := &harness{t: t, mode: mode, url: url, pool: testkit.Pool(t, url), bus: bus, writer: outbox.NewWriter(mode)}
	ctx := context.Background()
	// Registered before any relay starts, so it runs after they stopped.
	t.Cleanup(h.dropSlots)
	if err := outbox.Migrate(ctx, h.pool); err != nil {
		t.Fatal(err)
	}
	if _, err := h.pool.Exec(ctx, `CREATE TABLE aggregates (id text PRIMARY KEY, version bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) config() relay.Config {
	return relay.Config{
		Mode:            h.mode,
		DatabaseURL:     h.url,
		Transport:       h.bus.Transport(),
		TopicPrefix:     prefix,
		Source:          "/switchyard/test",
		StatusInterval:  100 * time.Millisecond,
		RetryInterval:   200 * time.Millisecond,
		ShutdownTimeout: 2 * time.Second,
		PollInterval:    20 * time.Millisecond,
	}
}

// prepare creates the outbox plumbing (slot, publication) before any write.
func (h *harness) prepare() {
	h.t.Helper()
	r, err := relay.New(h.config())
	if err != nil {
		h.t.Fatal(err)
	}
	if err := r.Prepare(context.Background()); err != nil {
		h.t.Fatal(err)
	}
}

// start runs a relay until the test ends or the returned cancel is called;
// wait blocks until Run has returned.
func (h *harness) start(cfg relay.Config) (r *relay.Relay, cancel func(), wait func()) {
	h.t.Helper()
	r, err := relay.New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := r.Prepare(context.Background()); err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Run(ctx); err != nil {
			h.t.Errorf("relay.Run: %v", err)
		}
	}()
	h.t.Cleanup(func() { cancel(); <-done })
	return r, cancel, func() { <-done }
}

// write commits one event for aggregate agg and returns its version.
func (h *harness) write(ctx context.Context, agg string) (int64, error) {
	var version int64
	err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO aggregates (id, version) VALUES ($1, 1)
			ON CONFLICT (id) DO UPDATE SET version = aggregates.version + 1 RETURNING version`, agg).Scan(&version)
		if err != nil {
			return err
		}
		return h.writer.Write(ctx, tx, outbox.Event{AggregateType: aggregateType, AggregateID: agg, Message: wrapperspb.Int64(version)})
	})
	return version, err
}

// writeMany commits perAgg events for each of aggs aggregates from workers
// goroutines, in shuffled order.
func (h *harness) writeMany(aggs, perAgg, workers int) {
	h.t.Helper()
	jobs := make([]string, 0, aggs*perAgg)
	for a := 0; a < aggs; a++ {
		for i := 0; i < perAgg; i++ {
			jobs = append(jobs, aggName(a))
		}
	}
	rand.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })
	ch := make(chan string)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for agg := range ch {
				if _, err := h.write(context.Background(), agg); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
	close(errs)
	for err := range errs {
		h.t.Fatalf("write: %v", err)
	}
}

func aggName(i int) string { return fmt.Sprintf("agg-%03d", i) }

// received is what a plain consumer found on the topic.
type received struct {
	msgs     []*transport.Message
	distinct map[string]int // ce_id -> copies
	versions map[string][]int64
}

func decode(t testing.TB, msgs []*transport.Message) received {
	t.Helper()
	r := received{msgs: msgs, distinct: map[string]int{}, versions: map[string][]int64{}}
	for _, m := range msgs {
		md, err := envelope.Decode(m)
		if err != nil {
			t.Fatalf("message at %s/%d@%s: %v", m.Topic, m.Partition, m.Position, err)
		}
		var v wrapperspb.Int64Value
		if err := proto.Unmarshal(m.Value, &v); err != nil {
			t.Fatalf("payload at %s/%d@%s: %v", m.Topic, m.Partition, m.Position, err)
		}
		r.distinct[md.ID.String()]++
		r.versions[string(m.Key)] = append(r.versions[string(m.Key)], v.Value)
	}
	return r
}

// readAll reads the topic until want distinct events have arrived and every
// partition has been read to its current end.
func (h *harness) readAll(want int, timeout time.Duration) received {
	h.t.Helper()
	var ends map[int32]int64
	seen := map[string]bool{}
	n := 0
	msgs := h.bus.ReadTopic(h.t, topic, timeout, func(msgs []*transport.Message) bool {
		for ; n < len(msgs); n++ {
			seen[envelope.Headers(msgs[n])[envelope.HeaderID]] = true
		}
		if len(seen) < want {
			return false
		}
		if ends == nil {
			ends = h.bus.EndOffsets(h.t, topic)
		}
		read := map[int32]int64{}
		for _, m := range msgs {
			if o := m.Offset + 1; o > read[m.Partition] {
				read[m.Partition] = o
			}
		}
		for p, end := range ends {
			if read[p] < end {
				return false
			}
		}
		return true
	})
	return decode(h.t, msgs)
}

// checkOrder asserts every aggregate's versions arrive as 1..n, in order,
// ignoring redelivered copies of versions already seen.
func checkOrder(t testing.TB, r received, aggs, perAgg int) {
	t.Helper()
	if len(r.versions) != aggs {
		t.Fatalf("events for %d aggregates, want %d", len(r.versions), aggs)
	}
	for agg, vs := range r.versions {
		var next int64 = 1
		for _, v := range vs {
			switch {
			case v == next:
				next++
			case v < next: // a redelivered copy
			default:
				t.Fatalf("%s: version %d arrived before %d (sequence %v)", agg, v, next, vs)
			}
		}
		if next != int64(perAgg)+1 {
			t.Fatalf("%s: got versions up to %d, want %d", agg, next-1, perAgg)
		}
	}
}

func (h *harness) outboxRows() int {
	h.t.Helper()
	var n int
	if err := h.pool.QueryRow(context.Background(), "SELECT count(*) FROM outbox").Scan(&n); err != nil {
		h.t.Fatal(err)
	}
	return n
}

// dropSlots drops the test database's replication slots: they outlive the
// test, and the cluster, shared by every test of the binary (-count=5
// included), has a fixed number of them.
func (h *harness) dropSlots() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	for ctx.Err() == nil {
		// A killed relay's walsender may not have noticed yet.
		_, _ = h.pool.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
			WHERE database = current_database() AND active_pid IS NOT NULL`)
		_, err = h.pool.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
			WHERE database = current_database()`)
		if err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.t.Errorf("drop the test's replication slots: %v", err)
}
