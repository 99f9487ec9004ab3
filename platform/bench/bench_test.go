// Package bench measures the platform against real PostgreSQL and kfake:
// how fast PostgreSQL commits outbox writes, how fast each relay mode drains
// a backlog, the latency from commit to a consumer seeing the event, and the
// inbox consumer's apply rate. Run with `make bench`; figures go into
// docs/benchmarks.md.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/relay"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/transport/transporttest"
)

func TestMain(m *testing.M) { testkit.Main(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const aggregates = 100

// timedBase marks the payloads of events whose latency is measured.
const timedBase = 1 << 40

type env struct {
	b      *testing.B
	url    string
	pool   *pgxpool.Pool
	bus    *transporttest.Bus
	tr     transport.Transport // bus's, or discard's
	writer *outbox.Writer
	mode   outbox.Mode
}

// eachSetup runs bench for every transport and relay mode.
func eachSetup(b *testing.B, bench func(b *testing.B, kind string, mode outbox.Mode)) {
	for _, kind := range transporttest.Kinds {
		for _, mode := range []outbox.Mode{outbox.ModeCDC, outbox.ModePoll} {
			b.Run(kind+"/"+string(mode), func(b *testing.B) { bench(b, kind, mode) })
		}
	}
}

func newEnv(b *testing.B, kind string, mode outbox.Mode) *env {
	url := testkit.Database(b)
	e := &env{b: b, url: url, pool: testkit.Pool(b, url), writer: outbox.NewWriter(mode), mode: mode}
	if kind == discardKind {
		e.tr = discard{}
	} else {
		e.bus = transporttest.New(b, kind, 12)
		e.tr = e.bus.Transport()
	}
	if err := e.relay().Prepare(context.Background()); err != nil {
		b.Fatal(err)
	}
	return e
}

func (e *env) relay() *relay.Relay {
	r, err := relay.New(relay.Config{
		Mode: e.mode, DatabaseURL: e.url, TopicPrefix: "bench.",
		Transport: e.tr,
		Logger:    quiet,
	})
	if err != nil {
		e.b.Fatal(err)
	}
	return r
}

// writeEvents commits n events, perTx per transaction, from workers
// goroutines, and returns the commit time of each event id.
func (e *env) writeEvents(n, perTx, workers int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for {
				start := next.Add(int64(perTx)) - int64(perTx)
				if start >= int64(n) {
					return
				}
				err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
					evs := make([]outbox.Event, 0, perTx)
					for i := start; i < start+int64(perTx) && i < int64(n); i++ {
						evs = append(evs, outbox.Event{AggregateType: "item", AggregateID: fmt.Sprintf("agg-%d", i%aggregates), Message: wrapperspb.Int64(i)})
					}
					return e.writer.Write(ctx, tx, evs...)
				})
				if err != nil {
					e.b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkOutboxCommit is the ceiling the relay must beat: single-event
// transactions committed by 8 concurrent writers.
func BenchmarkOutboxCommit(b *testing.B) {
	for _, mode := range []outbox.Mode{outbox.ModeCDC, outbox.ModePoll} {
		b.Run(string(mode), func(b *testing.B) {
			e := newEnv(b, "kafka", mode)
			const n = 20000
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				e.writeEvents(n, 1, 8)
			}
			b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "commits/s")
		})
	}
}

// BenchmarkRelayDrain drains a backlog of 100,000 committed events.
//
// Its discard/cdc case publishes to a transport that acknowledges every
// message at once and keeps nothing: what the relay and PostgreSQL's
// walsender manage with no broker, the ceiling of any broker's figure.
func BenchmarkRelayDrain(b *testing.B) {
	b.Run(discardKind+"/"+string(outbox.ModeCDC), func(b *testing.B) { drain(b, discardKind, outbox.ModeCDC) })
	eachSetup(b, drain)
}

func drain(b *testing.B, kind string, mode outbox.Mode) {
	const n = 100000
	var total, self, rest time.Duration
	var allocs, syscalls uint64
	var ms runtime.MemStats
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e := newEnv(b, kind, mode)
		e.writeEvents(n, 100, 4)
		r := e.relay()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		runtime.ReadMemStats(&ms)
		allocs -= ms.Mallocs
		syscalls -= ioSyscalls(b)
		self0, machine0 := testkit.CPU(b)
		b.StartTimer()
		start := time.Now()
		go func() { defer close(done); _ = r.Run(ctx) }()
		for r.Stats().Published < n {
			time.Sleep(5 * time.Millisecond)
		}
		total += time.Since(start)
		b.StopTimer()
		self1, machine1 := testkit.CPU(b)
		runtime.ReadMemStats(&ms)
		allocs += ms.Mallocs
		syscalls += ioSyscalls(b)
		self += self1 - self0
		rest += (machine1 - machine0) - (self1 - self0)
		cancel()
		<-done
	}
	events := float64(n * b.N)
	b.ReportMetric(events/total.Seconds(), "events/s")
	// What an event costs: allocations and CPU in this process (the relay,
	// and the broker's client, or the broker itself when it runs here),
	// and CPU in the rest of the machine (PostgreSQL's walsender, and the
	// broker when it is a process of its own).
	b.ReportMetric(float64(allocs)/events, "allocs/event")
	b.ReportMetric(float64(syscalls)/events, "io-syscalls/event")
	b.ReportMetric(float64(self.Nanoseconds())/1000/events, "process-cpu-us/event")
	b.ReportMetric(float64(rest.Nanoseconds())/1000/events, "rest-cpu-us/event")
}

// ioSyscalls returns how many read and write system calls (of any kind:
// sockets, pipes, files) this process has made so far.
func ioSyscalls(b *testing.B) uint64 {
	raw, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Fatal(err)
	}
	var n uint64
	for line := range strings.SplitSeq(string(raw), "\n") {
		k, v, _ := strings.Cut(line, ": ")
		if k == "syscr" || k == "syscw" {
			c, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				b.Fatalf("/proc/self/io: %v", err)
			}
			n += c
		}
	}
	return n
}

// discardKind names the transport that acknowledges and drops everything.
const discardKind = "discard"

// discard is a transport whose publisher acknowledges every message as
// soon as it is queued, in order, and keeps nothing. Only the relay uses
// it.
type discard struct{}

func (discard) System() string { return discardKind }
func (discard) NewPublisher(string, *slog.Logger) (transport.Publisher, error) {
	p := &discardPublisher{acks: make(chan func(transport.Delivery), 4096), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for ack := range p.acks {
			ack(transport.Delivery{Position: "0"})
		}
	}()
	return p, nil
}
func (discard) NewSubscriber(transport.SubscriberConfig) (transport.Subscriber, error) {
	return nil, errors.New("discard: no subscribers")
}
func (discard) EnsureTopics(context.Context, ...string) error           { return nil }
func (discard) Check(context.Context) error                             { return nil }
func (discard) Ends(context.Context, ...string) (transport.Ends, error) { return nil, nil }
func (discard) BacklogBefore(context.Context, string, transport.Ends) (int64, error) {
	return 0, nil
}
func (discard) DeleteGroup(context.Context, string, ...string) error { return nil }
func (discard) Close() error                                         { return nil }

type discardPublisher struct {
	acks   chan func(transport.Delivery)
	done   chan struct{}
	closed sync.Once
}

func (p *discardPublisher) Publish(ctx context.Context, _ *transport.Message, ack func(transport.Delivery)) error {
	select {
	case p.acks <- ack:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
func (p *discardPublisher) Failed() <-chan error { return nil }
func (p *discardPublisher) Flush(time.Duration) bool {
	return len(p.acks) == 0
}
func (p *discardPublisher) Close() {
	p.closed.Do(func() { close(p.acks) })
	<-p.done
}

// BenchmarkCommitToConsumer writes single-event transactions at a steady
// rate with the relay running and measures, per event, the time from commit
// to a group member of the transport receiving it (which includes the
// relay's publish and the broker's acknowledgement).
func BenchmarkCommitToConsumer(b *testing.B) {
	eachSetup(b, func(b *testing.B, kind string, mode outbox.Mode) {
		const rate, seconds = 500, 10
		e := newEnv(b, kind, mode)
		r := e.relay()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() { _ = r.Run(ctx) }()
		e.writeEvents(aggregates, 1, 1) // create the topic, warm up
		for r.Stats().Published < aggregates {
			time.Sleep(5 * time.Millisecond)
		}

		sub, err := e.bus.Transport().NewSubscriber(transport.SubscriberConfig{Group: "bench", Topics: []string{"bench.item"}, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		committed := sync.Map{}
		var mu sync.Mutex
		var latencies []time.Duration
		want := rate * seconds
		received := make(chan struct{}, want)
		var joined atomic.Bool // the member has its partitions: it received the warm-up events
		go func() {
			_ = sub.Run(ctx, func(cl transport.Claim) {
				for {
					select {
					case batch, ok := <-cl.Messages():
						if !ok {
							return
						}
						joined.Store(true)
						at := time.Now()
						for _, m := range batch {
							var v wrapperspb.Int64Value
							if proto.Unmarshal(m.Value, &v) != nil || v.Value < timedBase {
								continue // a warm-up event
							}
							id := m.Header(envelope.HeaderID)
							for i := 0; i < 100; i++ {
								if t, ok := committed.Load(id); ok {
									mu.Lock()
									latencies = append(latencies, at.Sub(t.(time.Time)))
									mu.Unlock()
									received <- struct{}{}
									break
								}
								time.Sleep(time.Millisecond) // the writer records after commit returns
							}
						}
						_ = cl.Commit(ctx, batch...)
					case <-cl.Context().Done():
						return
					}
				}
			})
		}()
		// The clock starts once the member has joined its group: events
		// written before would wait for the join (on Kafka about 150 ms,
		// which had been the whole of the p99 and max).
		for start := time.Now(); !joined.Load(); time.Sleep(time.Millisecond) {
			if time.Since(start) > time.Minute {
				b.Fatal("the consumer never joined its group")
			}
		}
		b.ResetTimer()
		tick := time.NewTicker(time.Second / rate)
		for i := 0; i < want; i++ {
			<-tick.C
			id := uuid.New()
			err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
				return e.writer.Write(ctx, tx, outbox.Event{ID: id, AggregateType: "item", AggregateID: fmt.Sprintf("agg-%d", i%aggregates), Message: wrapperspb.Int64(timedBase + int64(i))})
			})
			if err != nil {
				b.Fatal(err)
			}
			committed.Store(id.String(), time.Now())
		}
		tick.Stop()
		deadline := time.After(time.Minute)
		for got := 0; got < want; got++ {
			select {
			case <-received:
			case <-deadline:
				b.Fatalf("received %d of %d events", got, want)
			}
		}
		b.StopTimer()
		mu.Lock()
		defer mu.Unlock()
		sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
		pct := func(p float64) float64 {
			return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
		}
		b.ReportMetric(pct(0.50), "p50-ms")
		b.ReportMetric(pct(0.99), "p99-ms")
		b.ReportMetric(pct(1), "max-ms")
	})
}

// BenchmarkConsumerApply measures events applied per second through the
// inbox from a backlog of 20,000 (each event an inbox row and a balance
// update, a partition's events in batches), from the first applied event.
func BenchmarkConsumerApply(b *testing.B) {
	for _, kind := range transporttest.Kinds {
		b.Run(kind, func(b *testing.B) { benchmarkConsumerApply(b, kind) })
	}
}

func benchmarkConsumerApply(b *testing.B, kind string) {
	const n = 20000
	e := newEnv(b, kind, outbox.ModeCDC)
	if _, err := e.pool.Exec(context.Background(), `CREATE TABLE balances (account text PRIMARY KEY, total bigint NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	e.bus.CreateTopic(b, "bench.deposit")
	tr := e.bus.Transport()
	p, err := tr.NewPublisher("bench", quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	var acked atomic.Int64
	for i := 0; i < n; i++ {
		payload, _ := proto.Marshal(wrapperspb.Int64(1))
		msg := envelope.Encode("bench.", "/bench", outbox.Record{ID: uuid.New(), AggregateType: "deposit",
			AggregateID: fmt.Sprintf("acct-%d", i%aggregates), Type: "google.protobuf.Int64Value", Payload: payload, CreatedAt: time.Now()}, nil)
		if err := p.Publish(context.Background(), msg, func(transport.Delivery) { acked.Add(1) }); err != nil {
			b.Fatal(err)
		}
	}
	if !p.Flush(2*time.Minute) || acked.Load() != n {
		b.Fatalf("%d of %d events acknowledged", acked.Load(), n)
	}
	for i := 0; i < b.N; i++ {
		c, err := consumer.New(consumer.Config{Transport: tr, Group: fmt.Sprintf("bench-%d", i),
			Topics: []string{"bench.deposit"}, Pool: e.pool, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		consumer.Handle(c, func(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
			_, err := tx.Exec(ctx, `INSERT INTO balances VALUES ($1, $2) ON CONFLICT (account) DO UPDATE SET total = balances.total + $2`, md.Key, v.Value)
			return err
		})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = c.Run(ctx) }()
		// The clock starts at the first applied event: joining the group
		// (on Kafka a rebalance of a second or so) is not applying.
		for c.Stats().Processed == 0 {
			time.Sleep(time.Millisecond)
		}
		self0, machine0 := testkit.CPU(b)
		start, first := time.Now(), c.Stats().Processed
		for c.Stats().Processed < n {
			time.Sleep(5 * time.Millisecond)
		}
		elapsed := time.Since(start)
		self1, machine1 := testkit.CPU(b)
		cancel()
		<-done
		b.ReportMetric(float64(n-first)/elapsed.Seconds(), "events/s")
		// Where the time goes: this process (the consumer, the broker's
		// client, and kfake when it is the broker) and the rest of the
		// machine (PostgreSQL; redis-server on Redis), as cores busy.
		b.ReportMetric((self1-self0).Seconds()/elapsed.Seconds(), "process-cores")
		b.ReportMetric(((machine1-machine0)-(self1-self0)).Seconds()/elapsed.Seconds(), "rest-cores")
	}
}
