package outbox_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/internal/testpb"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// Poll mode keeps the row with every Debezium column; cdc mode leaves the
// table empty; invalid events write nothing.
func TestWriteModes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode outbox.Mode
		rows int
	}{{outbox.ModePoll, 1}, {outbox.ModeCDC, 0}} {
		t.Run(string(tc.mode), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := migrated(t)
			traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
			spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
			tctx := trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled}))
			w := outbox.NewWriter(tc.mode)
			err := pgx.BeginFunc(tctx, pool, func(tx pgx.Tx) error {
				return w.Write(tctx, tx, outbox.Event{AggregateType: "order", AggregateID: "o-1", Message: wrapperspb.String("x")})
			})
			if err != nil {
				t.Fatal(err)
			}
			var n int
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != tc.rows {
				t.Fatalf("%d outbox rows, want %d", n, tc.rows)
			}
			if tc.mode == outbox.ModePoll {
				var typ, agg, tsc string
				var payload []byte
				if err := pool.QueryRow(ctx, "SELECT type, aggregateid, payload, tracingspancontext FROM outbox").Scan(&typ, &agg, &payload, &tsc); err != nil {
					t.Fatal(err)
				}
				var got wrapperspb.StringValue
				if typ != "google.protobuf.StringValue" || agg != "o-1" || proto.Unmarshal(payload, &got) != nil || got.Value != "x" {
					t.Fatalf("row = (%s, %s, %x)", typ, agg, payload)
				}
				if c := outbox.TraceCarrier(tsc); c["traceparent"] != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" {
					t.Fatalf("tracingspancontext = %q", tsc)
				}
			}
		})
	}
}

// A message that declares its aggregate needs none in the Event.
func TestAggregateDeclaredByTheMessage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrated(t)
	w := outbox.NewWriter(outbox.ModePoll)
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return w.Write(ctx, tx,
			outbox.Event{AggregateID: "go", Message: &testpb.Word{Text: "go"}},
			outbox.Event{AggregateType: "count", AggregateID: "go", Message: &testpb.WordCounted{Text: "go", Count: 1}})
	})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, "SELECT aggregatetype FROM outbox ORDER BY type")
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || !slices.Equal(got, []string{"word", "count"}) {
		t.Fatalf("aggregate types %v (%v), want [word count]", got, err)
	}
}

func TestInvalidEventsRejected(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrated(t)
	w := outbox.NewWriter(outbox.ModePoll)
	for name, ev := range map[string]outbox.Event{
		"nil message":        {AggregateType: "order", AggregateID: "1"},
		"empty aggregate id": {AggregateType: "order", Message: wrapperspb.String("x")},
		"bad topic chars":    {AggregateType: "order/../x", AggregateID: "1", Message: wrapperspb.String("x")},
		"empty type":         {AggregateID: "1", Message: wrapperspb.String("x")},
		"another aggregate than the message declares": {AggregateType: "order", AggregateID: "go", Message: &testpb.Word{Text: "go"}},
	} {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			// A valid event first: the invalid one must fail the whole write.
			return w.Write(ctx, tx, outbox.Event{AggregateType: "order", AggregateID: "ok", Message: wrapperspb.String("x")}, ev)
		})
		if !errors.Is(err, outbox.ErrInvalidEvent) {
			t.Errorf("%s: Write = %v, want ErrInvalidEvent", name, err)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&n); err != nil || n != 0 {
		t.Fatalf("outbox has %d rows (%v) after rejected writes, want 0", n, err)
	}
}

func TestParseMode(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]outbox.Mode{"": outbox.ModeCDC, "cdc": outbox.ModeCDC, "POLL": outbox.ModePoll} {
		if got, err := outbox.ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := outbox.ParseMode("debezium"); err == nil {
		t.Error("ParseMode accepted an unknown mode")
	}
}

// An event bigger than the writer's limit, counting what the envelope adds
// (key, headers), fails the whole Write with ErrEventTooLarge stating its
// size and the limit; nothing of the transaction is committed.
func TestEventTooLargeRejected(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrated(t)
	if _, err := pool.Exec(ctx, "CREATE TABLE business (id int)"); err != nil {
		t.Fatal(err)
	}
	if got := outbox.NewWriter(outbox.ModePoll).MaxEventBytes(); got != outbox.DefaultMaxEventBytes || got >= 1_000_000 {
		t.Fatalf("default limit %d, want DefaultMaxEventBytes below Kafka's 1,000,000", got)
	}
	small := outbox.NewWriter(outbox.ModePoll, outbox.WithMaxEventBytes(4000))
	for _, tc := range []struct {
		name   string
		w      *outbox.Writer
		ev     outbox.Event
		reject bool
	}{
		{"default limit, 1 MiB payload", outbox.NewWriter(outbox.ModePoll), outbox.Event{AggregateType: "order", AggregateID: "o-1", Message: wrapperspb.Bytes(make([]byte, 1<<20))}, true},
		{"default limit, 800 KB payload", outbox.NewWriter(outbox.ModePoll), outbox.Event{AggregateType: "order", AggregateID: "o-1", Message: wrapperspb.Bytes(make([]byte, 800_000))}, false},
		{"payload fits, key and headers do not", small, outbox.Event{AggregateType: "order", AggregateID: strings.Repeat("k", 1000), Message: wrapperspb.Bytes(make([]byte, 2000))}, true},
		{"payload and short key fit", small, outbox.Event{AggregateType: "order", AggregateID: "o-1", Message: wrapperspb.Bytes(make([]byte, 2000))}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before int
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&before); err != nil {
				t.Fatal(err)
			}
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "INSERT INTO business VALUES (1)"); err != nil {
					return err
				}
				// A valid event first: the big one must fail the whole write.
				return tc.w.Write(ctx, tx, outbox.Event{AggregateType: "order", AggregateID: "ok", Message: wrapperspb.String("x")}, tc.ev)
			})
			var after int
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&after); err != nil {
				t.Fatal(err)
			}
			if !tc.reject {
				if err != nil || after != before+2 {
					t.Fatalf("Write = %v, %d rows added; want both events written", err, after-before)
				}
				return
			}
			if !errors.Is(err, outbox.ErrEventTooLarge) {
				t.Fatalf("Write = %v, want ErrEventTooLarge", err)
			}
			if limit := strconv.Itoa(tc.w.MaxEventBytes()); !strings.Contains(err.Error(), "limit of "+limit) || !strings.Contains(err.Error(), " bytes") {
				t.Fatalf("error %q does not state the size and the limit %s", err, limit)
			}
			if after != before {
				t.Fatalf("%d outbox rows added by a rejected write", after-before)
			}
		})
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM business").Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d business rows (%v), want only the 2 accepted transactions' rows", n, err)
	}
}

// Queue puts the events' statements in the caller's batch, after its own:
// one round trip writes both; a refused event queues nothing.
func TestQueueInTheCallersBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrated(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE words (w text)`); err != nil {
		t.Fatal(err)
	}
	w := outbox.NewWriter(outbox.ModePoll)
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO words VALUES ('go')`)
	if err := w.Queue(ctx, b, outbox.Event{AggregateID: "go", Message: &testpb.Word{Text: "go"}},
		outbox.Event{AggregateType: "elsewhere", AggregateID: "go", Message: &testpb.Word{Text: "go"}}); !errors.Is(err, outbox.ErrInvalidEvent) {
		t.Fatalf("Queue with a refused event = %v, want ErrInvalidEvent", err)
	}
	if b.Len() != 1 {
		t.Fatalf("a refused Queue left %d statements in the batch, want the caller's 1", b.Len())
	}
	if err := w.Queue(ctx, b, outbox.Event{AggregateID: "go", Message: &testpb.Word{Text: "go"}}); err != nil {
		t.Fatal(err)
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return tx.SendBatch(ctx, b).Close() })
	if err != nil {
		t.Fatal(err)
	}
	var words, events int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM words), (SELECT count(*) FROM outbox WHERE aggregatetype = 'word')`).Scan(&words, &events); err != nil || words != 1 || events != 1 {
		t.Fatalf("%d words and %d events (%v), want 1 and 1", words, events, err)
	}
}

// migrated returns a pool on a fresh database with the outbox table.
func migrated(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool := testkit.Pool(t, testkit.Database(t))
	if err := outbox.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	return pool
}
