package relay_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/relay"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/transport/transporttest"
)

// writeEvent commits one event carrying msg for aggregate agg with w.
func (h *harness) writeEvent(w *outbox.Writer, agg string, msg proto.Message) error {
	ctx := context.Background()
	return pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
		return w.Write(ctx, tx, outbox.Event{AggregateType: aggregateType, AggregateID: agg, Message: msg})
	})
}

// The largest event the writer accepts by default, with a full trace
// context, is accepted by the broker's default limits and published.
func TestLargestAcceptedEventIsPublished(t *testing.T) {
	t.Parallel()
	for _, kind := range transporttest.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, kind, outbox.ModeCDC)
			h.start(h.config())
			traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
			spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
			state, err := trace.ParseTraceState(strings.Repeat("v", 240) + "=" + strings.Repeat("x", 250))
			if err != nil {
				t.Fatal(err)
			}
			ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled, TraceState: state,
			}))
			agg := strings.Repeat("a", 64)
			typ := "google.protobuf.BytesValue"
			// The biggest payload within the limit (random, so compression
			// does not help): a BytesValue adds a tag and a 3-byte length.
			room := outbox.DefaultMaxEventBytes - outbox.EventSize(0, agg, typ, outbox.EncodeTraceContext(ctx))
			msg := wrapperspb.Bytes(make([]byte, room-4))
			if size := outbox.EventSize(proto.Size(msg), agg, typ, outbox.EncodeTraceContext(ctx)); size != outbox.DefaultMaxEventBytes {
				t.Fatalf("event size %d, want exactly the limit %d", size, outbox.DefaultMaxEventBytes)
			}
			_, _ = rand.Read(msg.Value)
			w := outbox.NewWriter(outbox.ModeCDC)
			err = pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
				return w.Write(ctx, tx, outbox.Event{AggregateType: aggregateType, AggregateID: agg, Message: msg})
			})
			if err != nil {
				t.Fatal(err)
			}
			msgs := h.bus.ReadTopic(t, topic, time.Minute, func(m []*transport.Message) bool { return len(m) == 1 })
			var got wrapperspb.BytesValue
			if err := proto.Unmarshal(msgs[0].Value, &got); err != nil || !bytes.Equal(got.Value, msg.Value) {
				t.Fatalf("payload of %d bytes (%v), want the %d bytes written", len(got.Value), err, len(msg.Value))
			}
			if tp := envelope.Headers(msgs[0])["tracestate"]; tp != state.String() {
				t.Fatalf("tracestate %q, want %q", tp, state.String())
			}
		})
	}
}

// An event the broker refuses (written by a writer whose limit was raised
// past Kafka's) holds its relay: the relay says so through Stats, Check and
// an error log line naming the event, and recovers once the event is gone.
func TestRelayThatCannotPublishIsVisible(t *testing.T) {
	t.Parallel()
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, "kafka", mode)
			h.prepare()
			w := outbox.NewWriter(mode, outbox.WithMaxEventBytes(4<<20))
			if err := h.writeEvent(w, "acct-1", wrapperspb.String("before")); err != nil {
				t.Fatal(err)
			}
			big := wrapperspb.Bytes(make([]byte, 2<<20))
			if err := h.writeEvent(w, "acct-2", big); err != nil {
				t.Fatal(err)
			}
			if err := h.writeEvent(w, "acct-3", wrapperspb.String("after")); err != nil {
				t.Fatal(err)
			}
			logs := &testkit.Logs{}
			cfg := h.config()
			cfg.StuckAfter = 300 * time.Millisecond
			cfg.Logger = logs.Logger()
			r, _, _ := h.start(cfg)

			testkit.WaitFor(t, time.Minute, "the relay to report that it is stuck", func() bool { return r.Stats().Stuck })
			s := r.Stats()
			if s.LastError == nil || s.FailingSince.IsZero() || s.Failures == 0 {
				t.Fatalf("stats %+v: want the last error, the time failing started and the failures", s)
			}
			if !strings.Contains(s.LastError.Error(), "acct-2") || !strings.Contains(strings.ToLower(s.LastError.Error()), "too large") {
				t.Fatalf("last error %q does not name the event (acct-2) and why", s.LastError)
			}
			if err := r.Check(); !errors.Is(err, relay.ErrStuck) || !strings.Contains(err.Error(), "acct-2") {
				t.Fatalf("Check = %v, want ErrStuck with the cause", err)
			}
			testkit.WaitFor(t, time.Minute, "an error log line saying the relay is stuck", func() bool {
				out := logs.String()
				return strings.Contains(out, "level=ERROR") && strings.Contains(out, "relay stuck") && strings.Contains(out, "acct-2")
			})
			if mode == outbox.ModeCDC {
				return // an event in the WAL cannot be removed; the operator raises the broker's limit
			}
			// Poll: the operator removes (or shrinks) the row; the relay
			// publishes what follows and is no longer stuck.
			if _, err := h.pool.Exec(context.Background(), "DELETE FROM outbox WHERE aggregateid = 'acct-2'"); err != nil {
				t.Fatal(err)
			}
			h.bus.ReadTopic(t, topic, time.Minute, func(m []*transport.Message) bool {
				for _, msg := range m {
					if string(msg.Key) == "acct-3" {
						return true
					}
				}
				return false
			})
			testkit.WaitFor(t, time.Minute, "the relay to recover", func() bool { return r.Check() == nil })
			testkit.WaitFor(t, time.Minute, "a log line saying it recovered", func() bool {
				return strings.Contains(logs.String(), "relay publishing again")
			})
		})
	}
}

// A broker that stays unreachable makes the relay stuck (Kafka: nothing is
// acknowledged; Redis: every term fails) until it is back.
func TestRelayStuckWhileBrokerDown(t *testing.T) {
	eachSetup(t, func(t *testing.T, h *harness) {
		cfg := h.config()
		cfg.StuckAfter = 500 * time.Millisecond
		r, _, _ := h.start(cfg)
		h.writeMany(2, 2, 1)
		h.readAll(4, time.Minute)
		if err := r.Check(); err != nil {
			t.Fatalf("Check = %v on a relay that publishes", err)
		}
		h.bus.Stop()
		if _, err := h.write(context.Background(), aggName(0)); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, time.Minute, "the relay to report that it is stuck", func() bool { return r.Check() != nil })
		if err := h.bus.Start(); err != nil {
			t.Fatal(err)
		}
		h.readAll(5, 2*time.Minute)
		testkit.WaitFor(t, time.Minute, "the relay to recover", func() bool { return r.Check() == nil })
	})
}

// A replication slot that disappears while its relay runs (an operator
// drops it; a fail-over promotes a server without it) is not recreated: the
// relay stops with ErrSlotLost saying how to recover, a restart refuses too,
// and after the documented acknowledgement a new slot is created.
func TestLostSlotIsNotRecreated(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "kafka", outbox.ModeCDC)
	ctx := context.Background()
	r, err := relay.New(h.config())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	if _, err := h.write(ctx, "acct-1"); err != nil {
		t.Fatal(err)
	}
	h.readAll(1, time.Minute)

	// Drop the slot the way an operator would: end its walsender, drop it
	// before the relay reconnects.
	testkit.WaitFor(t, time.Minute, "the slot to be dropped", func() bool {
		_, _ = h.pool.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, r.Slot())
		_, err := h.pool.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, r.Slot())
		return err == nil
	})
	if _, err := h.write(ctx, "acct-2"); err != nil { // in the gap: no slot sees it
		t.Fatal(err)
	}
	var runErr error
	select {
	case runErr = <-done:
	case <-time.After(time.Minute):
		t.Fatal("the relay kept running without its slot")
	}
	checkSlotLost(t, runErr, r.Slot())
	if n := h.slots(r.Slot()); n != 0 {
		t.Fatalf("the slot was recreated (%d slots)", n)
	}
	if s := r.Stats(); !errors.Is(s.LastError, relay.ErrSlotLost) {
		t.Fatalf("Stats.LastError = %v, want ErrSlotLost", s.LastError)
	}

	// A restarted service refuses as well.
	r2, err := relay.New(h.config())
	if err != nil {
		t.Fatal(err)
	}
	checkSlotLost(t, r2.Prepare(ctx), r.Slot())
	if n := h.slots(r.Slot()); n != 0 {
		t.Fatalf("Prepare recreated the slot (%d slots)", n)
	}

	// The documented acknowledgement lets the relay start afresh.
	if _, err := h.pool.Exec(ctx, "DELETE FROM relay_slots WHERE slot_name = $1", r.Slot()); err != nil {
		t.Fatal(err)
	}
	h.start(h.config())
	if _, err := h.write(ctx, "acct-3"); err != nil {
		t.Fatal(err)
	}
	got := h.readAll(2, time.Minute)
	if _, ok := got.versions["acct-3"]; !ok {
		t.Fatalf("after the acknowledgement, events for %v arrived, want acct-3", got.versions)
	}
}

func checkSlotLost(t *testing.T, err error, slot string) {
	t.Helper()
	if !errors.Is(err, relay.ErrSlotLost) {
		t.Fatalf("error %v, want ErrSlotLost", err)
	}
	for _, want := range []string{slot, "no longer exists", "DELETE FROM relay_slots WHERE slot_name = '" + slot + "'"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not say %q", err, want)
		}
	}
}

// slots counts the replication slots named slot.
func (h *harness) slots(slot string) int {
	h.t.Helper()
	var n int
	if err := h.pool.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&n); err != nil {
		h.t.Fatal(err)
	}
	return n
}

// Preparing a fresh database from many replicas at once creates one slot
// and reports no loss: a replica must not see the slot missing and then its
// twin's record of it.
func TestConcurrentPrepare(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "kafka", outbox.ModeCDC)
	const replicas = 8
	errs := make(chan error, replicas)
	start := make(chan struct{})
	for i := 0; i < replicas; i++ {
		r, err := relay.New(h.config())
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			<-start
			errs <- r.Prepare(context.Background())
		}()
	}
	close(start)
	for i := 0; i < replicas; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("replica %d: Prepare = %v", i, err)
		}
	}
	r, _ := relay.New(h.config())
	if n := h.slots(r.Slot()); n != 1 {
		t.Fatalf("%d slots, want 1", n)
	}
}

// Rows a poll relay left in the outbox are published, in order and before
// anything newer, when the service switches to cdc mode; the table ends
// empty.
func TestSwitchFromPollToCDCPublishesLeftovers(t *testing.T) {
	t.Parallel()
	for _, kind := range transporttest.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			const aggs, perAgg = 5, 20
			h := newHarness(t, kind, outbox.ModePoll)
			h.writeMany(aggs, perAgg, 4) // poll-mode writes nobody published
			h.mode, h.writer = outbox.ModeCDC, outbox.NewWriter(outbox.ModeCDC)
			r, _, _ := h.start(h.config())
			h.writeMany(aggs, perAgg, 4)
			got := h.readAll(2*aggs*perAgg, 2*time.Minute)
			checkOrder(t, got, aggs, 2*perAgg)
			testkit.WaitFor(t, 30*time.Second, "the left rows to be deleted", func() bool { return h.outboxRows() == 0 })
			if s := r.Stats(); !s.Active {
				t.Fatalf("stats %+v, want the cdc relay active", s)
			}
		})
	}
}

// A relay whose broker is down long enough to fill its producer's queue
// waits for room, and meanwhile keeps answering PostgreSQL: its walsender
// does not time out, so a standby does not start a second term beside it,
// and everything arrives in order once the broker is back.
func TestFullQueueKeepsTheTerm(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "kafka", outbox.ModeCDC)
	const senderTimeout = 3 * time.Second
	cfg := h.config()
	// This relay's walsenders give up on a silent relay after 3 s.
	cfg.DatabaseURL = h.url + "&options=-c%20wal_sender_timeout%3D3s"
	if !strings.Contains(h.url, "?") {
		cfg.DatabaseURL = h.url + "?options=-c%20wal_sender_timeout%3D3s"
	}
	tr, err := broker.New(broker.Config{Brokers: h.bus.Kafka().Addr(), Partitions: 8,
		Extra: kafka.ConfigMap{"queue.buffering.max.messages": 3}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	cfg.Transport = tr
	a, _, _ := h.start(cfg)
	testkit.WaitFor(t, 30*time.Second, "the first relay to become active", func() bool { return a.Stats().Active })
	h.writeMany(1, 1, 1)
	h.readAll(1, time.Minute)
	b, _, _ := h.start(cfg)
	ctx := context.Background()
	var sender int
	if err := h.pool.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, a.Slot()).Scan(&sender); err != nil {
		t.Fatal(err)
	}

	h.bus.Stop()
	for range 10 { // more than the producer's queue holds
		if _, err := h.write(ctx, aggName(0)); err != nil {
			t.Fatal(err)
		}
	}
	written := time.Now()
	testkit.WaitFor(t, time.Minute, "the first relay's walsender to hear from it well past its timeout", func() bool {
		var replied time.Time
		err := h.pool.QueryRow(ctx, `SELECT coalesce(reply_time, 'epoch') FROM pg_stat_replication WHERE pid = $1`, sender).Scan(&replied)
		if errors.Is(err, pgx.ErrNoRows) {
			t.Fatalf("the first relay's walsender has gone: it did not hear from the relay while its queue was full")
		}
		return err == nil && replied.After(written.Add(3*senderTimeout))
	})
	if b.Stats().Active {
		t.Fatal("the standby is active beside the first relay")
	}
	if err := h.bus.Start(); err != nil {
		t.Fatal(err)
	}
	checkOrder(t, h.readAll(11, 2*time.Minute), 1, 11)
	if b.Stats().Active || b.Stats().Published != 0 {
		t.Fatalf("the standby published: %+v", b.Stats())
	}
}

// A publication that no longer publishes the outbox's inserts (the table
// dropped and created again, or the publication altered) would relay
// nothing while writers delete their rows: Prepare refuses it, saying how
// to repair it, and succeeds once repaired.
func TestIncompletePublicationRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, c := range []struct{ name, breakIt string }{
		{"table left the publication", `ALTER PUBLICATION switchyard_outbox DROP TABLE outbox`},
		{"inserts not published", `ALTER PUBLICATION switchyard_outbox SET (publish = 'delete')`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, "kafka", outbox.ModeCDC)
			h.prepare()
			if _, err := h.pool.Exec(ctx, c.breakIt); err != nil {
				t.Fatal(err)
			}
			r, err := relay.New(h.config())
			if err != nil {
				t.Fatal(err)
			}
			err = r.Prepare(ctx)
			if !errors.Is(err, relay.ErrPublicationIncomplete) || !relay.IsPermanent(err) {
				t.Fatalf("Prepare = %v, want a permanent ErrPublicationIncomplete", err)
			}
			if _, err := h.pool.Exec(ctx, `ALTER PUBLICATION switchyard_outbox ADD TABLE outbox`); err != nil && !strings.Contains(err.Error(), "already member") {
				t.Fatal(err)
			}
			if _, err := h.pool.Exec(ctx, `ALTER PUBLICATION switchyard_outbox SET (publish = 'insert')`); err != nil {
				t.Fatal(err)
			}
			if err := r.Prepare(ctx); err != nil {
				t.Fatalf("Prepare after the repair the error names: %v", err)
			}
		})
	}
}
