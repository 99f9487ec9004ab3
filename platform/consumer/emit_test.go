package consumer

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/transport"
)

// Events a handler emits, however many times it calls Emit, are written in
// one round trip before the commit, in the order emitted; a rolled-back
// transaction leaves none of them.
func TestEmitWritesOnceBeforeCommit(t *testing.T) {
	t.Parallel()
	if err := Emit(context.Background(), Metadata{}, outbox.NewWriter(outbox.ModePoll), outbox.Event{}); !errors.Is(err, ErrNoTransaction) {
		t.Errorf("Emit with a Metadata of no transaction: %v, want ErrNoTransaction", err)
	}
	ctx := context.Background()
	c, counter := countedConsumer(t)
	if err := outbox.Migrate(ctx, c.cfg.Pool); err != nil {
		t.Fatal(err)
	}
	w := outbox.NewWriter(outbox.ModePoll) // keeps its rows, to be read back
	Handle(c, func(ctx context.Context, _ pgx.Tx, v *wrapperspb.Int64Value, md Metadata) error {
		for i := range int64(3) {
			if err := Emit(ctx, md, w, outbox.Event{AggregateType: "emitted", AggregateID: md.ID.String(), Message: wrapperspb.Int64(10*v.Value + i)}); err != nil {
				return err
			}
		}
		if v.Value < 0 {
			return Permanent(errors.New("refused"))
		}
		return nil
	})
	h := c.handlers["google.protobuf.Int64Value"]
	apply := func(value int64) (uuid.UUID, error) {
		md := Metadata{Metadata: envelope.Metadata{ID: uuid.New(), Type: "google.protobuf.Int64Value"}, Topic: "test.fence"}
		_, err := c.apply(ctx, epochClaim{}, h, wrapperspb.Int64(value), md)
		return md.ID, err
	}
	before := counter.n.Load()
	id, err := apply(1)
	if err != nil {
		t.Fatal(err)
	}
	if got := counter.n.Load() - before; got != 4 {
		t.Errorf("%d round trips, want 4 (BEGIN, fence and inbox, the three events, COMMIT)", got)
	}
	rolledBack, err := apply(-1)
	if err == nil {
		t.Fatal("the refusing handler's event was applied")
	}

	var payloads [][]byte
	rows, err := c.cfg.Pool.Query(ctx, `SELECT aggregateid, payload FROM outbox WHERE aggregatetype = 'emitted' ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var agg string
		var payload []byte
		if err := rows.Scan(&agg, &payload); err != nil {
			t.Fatal(err)
		}
		if agg == rolledBack.String() {
			t.Errorf("an event of the rolled-back transaction was written")
		}
		payloads = append(payloads, payload)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(payloads) != 3 {
		t.Fatalf("%d events of %s written, want 3", len(payloads), id)
	}
	for i, p := range payloads {
		var got wrapperspb.Int64Value
		if err := proto.Unmarshal(p, &got); err != nil {
			t.Fatal(err)
		}
		if want := 10 + int64(i); got.Value != want {
			t.Errorf("event %d carries %d, want %d (the order emitted)", i, got.Value, want)
		}
	}
}

// atCommit calls fn when a COMMIT starts, once armed.
type atCommit struct {
	armed atomic.Bool
	fn    func()
}

func (a *atCommit) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.EqualFold(d.SQL, "commit") && a.armed.Load() {
		a.fn()
	}
	return ctx
}

func (*atCommit) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// A consumer that stops while a transaction commits lets the commit
// finish, whether it applies one event or a batch: a COMMIT cut off in
// flight may commit without the consumer learning it, and the events would
// count as neither applied nor failed (and be duplicates to the partition's
// next owner).
func TestStopDuringCommitFinishesIt(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		events int
	}{{"one event", 1}, {"batch", 3}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			hook := &atCommit{fn: stop}
			c := tracedConsumer(t, hook)
			if _, err := c.cfg.Pool.Exec(context.Background(), `CREATE TABLE applied (event uuid PRIMARY KEY)`); err != nil {
				t.Fatal(err)
			}
			Handle(c, func(ctx context.Context, tx pgx.Tx, _ *wrapperspb.Int64Value, md Metadata) error {
				_, err := tx.Exec(ctx, `INSERT INTO applied VALUES ($1)`, md.ID)
				return err
			})
			h := c.handlers["google.protobuf.Int64Value"]
			run := make([]ready, tc.events)
			ids := make([]uuid.UUID, tc.events)
			for i := range run {
				md := Metadata{Metadata: envelope.Metadata{ID: uuid.New(), Type: "google.protobuf.Int64Value"}, Topic: "test.fence", Offset: int64(i)}
				run[i] = ready{msg: &transport.Message{Topic: md.Topic, Offset: md.Offset}, md: md, h: h, event: wrapperspb.Int64(1), parent: ctx}
				ids[i] = md.ID
			}
			hook.armed.Store(true)
			var err error
			if tc.events == 1 {
				_, err = c.apply(ctx, epochClaim{}, h, run[0].event, run[0].md)
			} else {
				_, _, err = c.applyTx(ctx, epochClaim{}, run)
			}
			if err != nil {
				t.Fatalf("stopped during its commit: %v, want the commit finished", err)
			}
			if ctx.Err() == nil {
				t.Fatal("the consumer's context did not end at the commit")
			}
			var n int
			if err := c.cfg.Pool.QueryRow(context.Background(), `SELECT count(*) FROM applied WHERE event = ANY($1)`, ids).Scan(&n); err != nil || n != tc.events {
				t.Fatalf("%d of %d events applied (%v), want all", n, tc.events, err)
			}
		})
	}
}
