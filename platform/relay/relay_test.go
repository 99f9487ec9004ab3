package relay_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/pgcluster"
	"github.com/switchyard/switchyard/platform/relay"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/transport/transporttest"
)

// 10,000 events over 100 aggregates, written concurrently, all arrive, each
// aggregate's in commit order; the outbox table ends empty.
func TestRelayDeliversEverythingInOrder(t *testing.T) {
	eachSetup(t, func(t *testing.T, h *harness) {
		mode := h.mode
		const aggs, perAgg = 100, 100
		r, _, _ := h.start(h.config())
		h.writeMany(aggs, perAgg, 8)
		got := h.readAll(aggs*perAgg, 3*time.Minute)
		if len(got.distinct) != aggs*perAgg {
			t.Fatalf("%d distinct events, want %d", len(got.distinct), aggs*perAgg)
		}
		checkOrder(t, got, aggs, perAgg)
		if mode == outbox.ModeCDC {
			if n := h.outboxRows(); n != 0 {
				t.Fatalf("cdc: outbox holds %d rows, want 0 (rows are deleted in the writing transaction)", n)
			}
		} else {
			testkit.WaitFor(t, 30*time.Second, "poll relay to delete published rows", func() bool { return h.outboxRows() == 0 })
		}
		// Acknowledgements are counted when they reach the relay, which
		// can be after the reader has the messages.
		testkit.WaitFor(t, time.Minute, "the relay to count every event acknowledged", func() bool {
			s := r.Stats()
			return s.Active && s.Published >= aggs*perAgg
		})
	})
}

// A plain Kafka consumer sees the documented key, CloudEvents headers, trace
// context and protobuf payload.
func TestPlainConsumerReadsEnvelope(t *testing.T) {
	t.Parallel()
	for _, kind := range transporttest.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, kind, outbox.ModeCDC)
			h.start(h.config())

			traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
			spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
			ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled,
			}))
			before := time.Now().Add(-time.Second)
			err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
				return h.writer.Write(ctx, tx, outbox.Event{AggregateType: aggregateType, AggregateID: "acct-42", Message: wrapperspb.String("hello")})
			})
			if err != nil {
				t.Fatal(err)
			}
			msgs := h.bus.ReadTopic(t, topic, time.Minute, func(m []*transport.Message) bool { return len(m) == 1 })
			m := msgs[0]
			if string(m.Key) != "acct-42" {
				t.Errorf("key = %q, want acct-42", m.Key)
			}
			var payload wrapperspb.StringValue
			if err := proto.Unmarshal(m.Value, &payload); err != nil || payload.Value != "hello" {
				t.Errorf("payload = %v (%v), want StringValue hello", &payload, err)
			}
			h2 := envelope.Headers(m)
			want := map[string]string{
				"ce_specversion": "1.0",
				"ce_source":      "/switchyard/test",
				"ce_type":        "google.protobuf.StringValue",
				"ce_subject":     "acct-42",
				"content-type":   "application/protobuf",
				"traceparent":    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			}
			for k, v := range want {
				if h2[k] != v {
					t.Errorf("header %s = %q, want %q", k, h2[k], v)
				}
			}
			if len(h2["ce_id"]) != 36 {
				t.Errorf("ce_id = %q, want a UUID", h2["ce_id"])
			}
			ts, err := time.Parse(time.RFC3339Nano, h2["ce_time"])
			if err != nil || ts.Before(before) || ts.After(time.Now().Add(time.Second)) {
				t.Errorf("ce_time = %q (%v), want the commit time in RFC 3339", h2["ce_time"], err)
			}
		})
	}
}

// Two relays on one database: one publishes, the other stands by and takes
// over when the first stops.
func TestOneActiveRelayAndTakeover(t *testing.T) {
	eachSetup(t, func(t *testing.T, h *harness) {
		r1, cancel1, wait1 := h.start(h.config())
		testkit.WaitFor(t, 30*time.Second, "first relay to become active", func() bool { return r1.Stats().Active })
		r2, _, _ := h.start(h.config())
		h.writeMany(10, 20, 4)
		h.readAll(200, time.Minute)
		if s := r2.Stats(); s.Active || s.Published != 0 {
			t.Fatalf("standby relay published: %+v", s)
		}
		// A message can reach the reader before its acknowledgement reaches
		// the relay, which is when the relay counts it.
		testkit.WaitFor(t, time.Minute, "the active relay to count 200 acknowledged", func() bool { return r1.Stats().Published >= 200 })

		cancel1()
		wait1()
		testkit.WaitFor(t, 30*time.Second, "standby to take over", func() bool { return r2.Stats().Active })
		h.writeMany(10, 20, 4)
		got := h.readAll(400, time.Minute)
		checkOrder(t, got, 10, 40)
		testkit.WaitFor(t, time.Minute, "the new active relay to count 200 acknowledged", func() bool { return r2.Stats().Published >= 200 })
	})
}

// The broker is unreachable for several seconds while writes continue:
// writes keep succeeding and everything arrives once the broker is back.
func TestBrokerOutage(t *testing.T) {
	eachSetup(t, func(t *testing.T, h *harness) {
		r, _, _ := h.start(h.config())
		h.writeMany(10, 10, 2) // topic exists, relay is warm
		h.readAll(100, time.Minute)

		h.bus.Stop()
		publishedAtStop := r.Stats().Published
		var during atomic.Int64
		stop := time.Now().Add(4 * time.Second)
		for i := 0; time.Now().Before(stop); i++ {
			if _, err := h.write(context.Background(), aggName(i%10)); err != nil {
				t.Fatalf("write while the broker is down: %v", err)
			}
			during.Add(1)
		}
		if err := h.bus.Start(); err != nil {
			t.Fatal(err)
		}
		total := 100 + int(during.Load())
		got := h.readAll(total, 2*time.Minute)
		if len(got.distinct) != total {
			t.Fatalf("%d distinct events, want %d", len(got.distinct), total)
		}
		if during.Load() < 10 {
			t.Fatalf("only %d writes during the outage", during.Load())
		}
		checkOrderPrefix(t, got)
		t.Logf("%d writes during a 4s outage; relay published %d before, %d after", during.Load(), publishedAtStop, r.Stats().Published)
	})
}

// checkOrderPrefix asserts each aggregate's versions are 1..n in order
// (ignoring redelivered copies), whatever n is.
func checkOrderPrefix(t testing.TB, r received) {
	t.Helper()
	for agg, vs := range r.versions {
		var next int64 = 1
		for _, v := range vs {
			if v > next {
				t.Fatalf("%s: version %d arrived before %d", agg, v, next)
			}
			if v == next {
				next++
			}
		}
	}
}

// The relay stops uncleanly (its context cancelled while Kafka cannot
// acknowledge, or its process killed with SIGKILL) in the middle of a
// stream; the next relay loses nothing, and re-sends only events after the
// last confirmed point.
func TestRelayCrashLosesNothing(t *testing.T) {
	t.Parallel()
	for _, kind := range transporttest.Kinds {
		for _, mode := range modes {
			for _, how := range []string{"cancel", "sigkill"} {
				t.Run(kind+"/"+string(mode)+"/"+how, func(t *testing.T) {
					t.Parallel()
					const aggs, perAgg = 20, 150
					h := newHarness(t, kind, mode)
					h.prepare()
					// Half the events are written while the first relay runs,
					// half after it was stopped: however fast it is, it
					// cannot have published everything.
					writes := make(chan struct{})
					go func() {
						defer close(writes)
						h.writeMany(aggs, perAgg/2, 4)
					}()

					var killed func()
					if how == "sigkill" {
						killed = h.startHelperProcess()
					} else {
						_, cancel, wait := h.start(h.config())
						killed = func() {
							h.bus.Stop() // acknowledgements cannot arrive: the stop is unclean
							cancel()
							wait()
							if err := h.bus.Start(); err != nil {
								t.Fatal(err)
							}
						}
					}
					testkit.WaitFor(t, time.Minute, "the first relay to publish", func() bool {
						return h.bus.HasTopic(topic) && sum(h.bus.EndOffsets(t, topic)) >= 300
					})
					killed()
					firstRun := h.bus.EndOffsets(t, topic)
					<-writes
					h.writeMany(aggs, perAgg-perAgg/2, 4)

					h.start(h.config())
					got := h.readAll(aggs*perAgg, 2*time.Minute)
					checkOrder(t, got, aggs, perAgg)
					checkDuplicatesAreSuffix(t, got, firstRun)
				})
			}
		}
	}
}

func sum(m map[int32]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// checkDuplicatesAreSuffix asserts no event arrived more than twice and,
// per partition, the events the first relay sent that were sent again form
// the tail of what it sent: only the unconfirmed window is repeated.
func checkDuplicatesAreSuffix(t testing.TB, r received, firstRun map[int32]int64) {
	t.Helper()
	type rec struct {
		offset int64
		id     string
	}
	first := map[int32][]rec{}
	second := map[string]bool{}
	for _, m := range r.msgs {
		id := envelope.Headers(m)[envelope.HeaderID]
		p, o := m.Partition, m.Offset
		if o < firstRun[p] {
			first[p] = append(first[p], rec{o, id})
		} else {
			second[id] = true
		}
	}
	dups := 0
	for id, n := range r.distinct {
		if n > 2 {
			t.Fatalf("event %s arrived %d times", id, n)
		}
		if n == 2 {
			dups++
		}
	}
	for p, recs := range first {
		sort.Slice(recs, func(i, j int) bool { return recs[i].offset < recs[j].offset })
		inTail := false
		for _, rc := range recs {
			if second[rc.id] {
				inTail = true
			} else if inTail {
				t.Fatalf("partition %d: event %s at offset %d was not resent although an earlier one was", p, rc.id, rc.offset)
			}
		}
	}
	t.Logf("first relay sent %d events; %d were sent again", sum(firstRun), dups)
}

// startHelperProcess runs a relay in a child process (this test binary) and
// returns a function that kills it with SIGKILL.
func (h *harness) startHelperProcess() (kill func()) {
	h.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		"RELAY_HELPER_URL="+h.url,
		"RELAY_HELPER_BROKERS="+h.bus.Addr(),
		"RELAY_HELPER_TRANSPORT="+h.bus.Kind(),
		"RELAY_HELPER_MODE="+string(h.mode),
	)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	var once sync.Once
	kill = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			_ = cmd.Wait()
		})
	}
	h.t.Cleanup(kill)
	return kill
}

// runHelperProcess is the child side of startHelperProcess.
func runHelperProcess() bool {
	url := os.Getenv("RELAY_HELPER_URL")
	if url == "" {
		return false
	}
	r, err := relay.New(relay.Config{
		Mode:           outbox.Mode(os.Getenv("RELAY_HELPER_MODE")),
		DatabaseURL:    url,
		Transport:      helperTransport(os.Getenv("RELAY_HELPER_TRANSPORT"), os.Getenv("RELAY_HELPER_BROKERS")),
		TopicPrefix:    prefix,
		StatusInterval: 100 * time.Millisecond,
		BatchSize:      50,
	})
	if err != nil {
		panic(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := r.Run(ctx); err != nil {
		panic(err)
	}
	return true
}

// cdc mode explains what to change when the database lacks logical
// replication, and poll mode works on that database.
func TestLogicalReplicationOff(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, err := pgcluster.Start(ctx, pgcluster.Options{DataDir: t.TempDir() + "/pg", Settings: map[string]string{"wal_level": "replica"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	r, err := relay.New(relay.Config{DatabaseURL: c.URL("postgres"), Transport: unreachable()})
	if err != nil {
		t.Fatal(err)
	}
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = r.Run(tctx)
	if !errors.Is(err, relay.ErrLogicalReplicationOff) || !strings.Contains(err.Error(), "wal_level=logical") {
		t.Fatalf("Run = %v, want ErrLogicalReplicationOff explaining wal_level=logical", err)
	}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]relay.Config{
		"no database":  {Transport: unreachable()},
		"no transport": {DatabaseURL: "postgres://x/y"},
		"bad mode":     {DatabaseURL: "postgres://x/y", Transport: unreachable(), Mode: "kafka-connect"},
	} {
		if _, err := relay.New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
}

func helperTransport(kind, addr string) transport.Transport {
	tr, err := transporttest.Open(kind, addr, 8)
	if err != nil {
		panic(err)
	}
	return tr
}

// unreachable is a Kafka transport nothing listens for.
func unreachable() transport.Transport { return helperTransport("kafka", "127.0.0.1:1") }
