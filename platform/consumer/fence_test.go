package consumer

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
)

// epochClaim is a claim of a fencing transport, frozen at one epoch.
type epochClaim struct {
	transport.Claim
	epoch int64
}

func (c epochClaim) Topic() string    { return "test.fence" }
func (c epochClaim) Partition() int32 { return 0 }
func (c epochClaim) Epoch() int64     { return c.epoch }

// Once a newer owner of a partition has applied something, or found it
// applied already, a former owner (a lower epoch) that wakes up cannot
// apply anything: its transaction is rolled back with ErrFenced.
func TestFormerOwnerIsFenced(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testkit.Pool(t, testkit.Database(t))
	if _, err := pool.Exec(ctx, `CREATE TABLE applied (id uuid PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	tr, err := broker.New(broker.Config{Brokers: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Transport: tr, Group: "fence", Topics: []string{"test.fence"}, Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	Handle(c, func(ctx context.Context, tx pgx.Tx, _ *wrapperspb.Int64Value, md Metadata) error {
		_, err := tx.Exec(ctx, `INSERT INTO applied VALUES ($1)`, md.ID)
		return err
	})
	if err := Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	h := c.handlers["google.protobuf.Int64Value"]
	first := uuid.New()
	apply := func(epoch int64, id uuid.UUID) error {
		md := Metadata{Metadata: envelope.Metadata{ID: id, Type: "google.protobuf.Int64Value"}, Topic: "test.fence"}
		_, err := c.apply(ctx, epochClaim{epoch: epoch}, h, wrapperspb.Int64(1), md)
		return err
	}
	for _, step := range []struct {
		epoch  int64
		id     uuid.UUID
		fenced bool
	}{
		{5, first, false},      // the first owner
		{5, uuid.New(), false}, // the same owner again
		{7, first, false},      // a new owner takes over, and its first event is a redelivery
		{5, uuid.New(), true},  // the former owner wakes up
		{6, uuid.New(), true},  // an owner in between
		{7, uuid.New(), false}, // the current owner goes on
	} {
		err := apply(step.epoch, step.id)
		if got := errors.Is(err, transport.ErrFenced); got != step.fenced || (!step.fenced && err != nil) {
			t.Fatalf("apply at epoch %d: %v, want fenced=%v", step.epoch, err, step.fenced)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM applied`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("%d events applied, want the 3 new ones of current owners", n)
	}
}

// trips counts a pool's round trips: each statement sent alone, each batch.
type trips struct{ n atomic.Int64 }

func (r *trips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	r.n.Add(1)
	return ctx
}
func (r *trips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (r *trips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	r.n.Add(1)
	return ctx
}
func (r *trips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (r *trips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// countedConsumer is a consumer of test.fence on a database of its own,
// whose pool counts round trips; the test calls its apply directly.
func countedConsumer(t *testing.T) (*Consumer, *trips) {
	t.Helper()
	counter := &trips{}
	return tracedConsumer(t, counter), counter
}

// tracedConsumer is a consumer of test.fence on a database of its own,
// whose pool's connections have tracer.
func tracedConsumer(t *testing.T, tracer pgx.QueryTracer) *Consumer {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(testkit.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Tracer = tracer
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	tr, err := broker.New(broker.Config{Brokers: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Transport: tr, Group: "trips", Topics: []string{"test.fence"}, Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// An event applied alone costs BEGIN, one round trip for the fence and the
// inbox row together, the handler's statements and COMMIT, whether or not
// the transport fences.
func TestApplyRoundTrips(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, counter := countedConsumer(t)
	Handle(c, func(ctx context.Context, tx pgx.Tx, _ *wrapperspb.Int64Value, _ Metadata) error {
		_, err := tx.Exec(ctx, `SELECT 1`)
		return err
	})
	h := c.handlers["google.protobuf.Int64Value"]
	for _, epoch := range []int64{0, 3} {
		md := Metadata{Metadata: envelope.Metadata{ID: uuid.New(), Type: "google.protobuf.Int64Value"}, Topic: "test.fence"}
		before := counter.n.Load()
		if _, err := c.apply(ctx, epochClaim{epoch: epoch}, h, wrapperspb.Int64(1), md); err != nil {
			t.Fatal(err)
		}
		if got := counter.n.Load() - before; got != 4 {
			t.Errorf("epoch %d: %d round trips, want 4 (BEGIN, fence and inbox, the handler's statement, COMMIT)", epoch, got)
		}
	}
}

// dlqClaim records what is dead-lettered.
type dlqClaim struct {
	epochClaim
	dead []*transport.Message
}

func (c *dlqClaim) DeadLetter(_ context.Context, m *transport.Message, extra []transport.Header) error {
	c.dead = append(c.dead, &transport.Message{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: append(append([]transport.Header(nil), m.Headers...), extra...)})
	return nil
}

// A message the transport has handed out more than MaxDeliveries times (its
// consumers keep crashing on it) is dead-lettered without another try: the
// backstop against poison loops that no handler error reports.
func TestPoisonLoopBackstop(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tr, err := broker.New(broker.Config{Brokers: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Transport: tr, Group: "loop", Topics: []string{"test.loop"}, Pool: testkit.Pool(t, testkit.Database(t)), MaxDeliveries: 3})
	if err != nil {
		t.Fatal(err)
	}
	called := false
	Handle(c, func(context.Context, pgx.Tx, *wrapperspb.Int64Value, Metadata) error {
		called = true
		return nil
	})
	cl := &dlqClaim{}
	msg := &transport.Message{Topic: "test.loop", Key: []byte("k"), Position: "1-0", Deliveries: 4}
	if !c.process(ctx, cl, msg) {
		t.Fatal("process did not finish the message")
	}
	if called || len(cl.dead) != 1 || c.Stats().DeadLettered != 1 {
		t.Fatalf("handler called=%v, %d dead-lettered: want the message dead-lettered untried", called, len(cl.dead))
	}
	if e := cl.dead[0].Header(HeaderDLQError); !strings.Contains(e, "delivered 4 times") {
		t.Fatalf("dlq_error %q, want the delivery count", e)
	}
}

// flakyClaim fails its first commits with a transient error, and records
// the commits that went through.
type flakyClaim struct {
	epochClaim
	fails     int
	committed []*transport.Message
}

func (c *flakyClaim) Commit(_ context.Context, msgs ...*transport.Message) error {
	if c.fails > 0 {
		c.fails--
		return errors.New("connection pool timeout")
	}
	c.committed = append(c.committed, msgs...)
	return nil
}

// A commit that fails for a reason other than losing the partition is
// retried until it goes through: a transport that acknowledges each
// message would otherwise keep the message pending for as long as it owns
// the partition.
func TestCommitIsRetried(t *testing.T) {
	t.Parallel()
	tr, err := broker.New(broker.Config{Brokers: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Transport: tr, Group: "commit", Topics: []string{"test.fence"}, Pool: testkit.Pool(t, testkit.Database(t)),
		Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cl := &flakyClaim{fails: 2}
	msg := &transport.Message{Topic: "test.fence", Position: "1-0"}
	if !c.commit(context.Background(), cl, msg) {
		t.Fatal("commit gave up with the partition still owned")
	}
	if len(cl.committed) != 1 || cl.committed[0] != msg {
		t.Fatalf("committed %v, want the message once the transport takes it", cl.committed)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if c.commit(ctx, &flakyClaim{fails: 1}, msg) {
		t.Fatal("commit reported success after its context ended without the transport taking it")
	}
}
