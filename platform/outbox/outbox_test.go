package outbox_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

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
			pool := testkit.Pool(t, testkit.Database(t))
			if err := outbox.Migrate(ctx, pool); err != nil {
				t.Fatal(err)
			}
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

func TestInvalidEventsRejected(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testkit.Pool(t, testkit.Database(t))
	if err := outbox.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	w := outbox.NewWriter(outbox.ModePoll)
	for name, ev := range map[string]outbox.Event{
		"nil message":        {AggregateType: "order", AggregateID: "1"},
		"empty aggregate id": {AggregateType: "order", Message: wrapperspb.String("x")},
		"bad topic chars":    {AggregateType: "order/../x", AggregateID: "1", Message: wrapperspb.String("x")},
		"empty type":         {AggregateID: "1", Message: wrapperspb.String("x")},
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
