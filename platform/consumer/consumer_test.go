package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/transport/transporttest"
)

func TestMain(m *testing.M) { testkit.Main(m) }

const topic = "test.deposit"

// harness: a topic of deposits (Int64Value amounts keyed by account) and a
// balances table the handler adds them to. Applying any deposit twice makes
// a balance wrong.
type harness struct {
	t    testing.TB
	pool *pgxpool.Pool
	bus  *transporttest.Bus
	tr   transport.Transport
	pub  transport.Publisher
}

// eachTransport runs test against every transport, in parallel.
func eachTransport(t *testing.T, test func(t *testing.T, h *harness)) {
	t.Parallel()
	for _, kind := range transporttest.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			test(t, newHarness(t, kind))
		})
	}
}

func newHarness(t testing.TB, kind string) *harness {
	t.Helper()
	h := &harness{t: t, pool: testkit.Pool(t, testkit.Database(t)), bus: transporttest.New(t, kind, 4)}
	h.bus.CreateTopic(t, topic)
	h.tr = h.bus.Transport()
	if _, err := h.pool.Exec(context.Background(), `CREATE TABLE balances (account text PRIMARY KEY, total bigint NOT NULL, deposits int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	p, err := h.tr.NewPublisher("test", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	h.pub = p
	return h
}

type deposit struct {
	id      uuid.UUID
	account string
	amount  int64
}

func newDeposit(account string, amount int64) deposit {
	return deposit{id: uuid.New(), account: account, amount: amount}
}

// send publishes deposits as the relay would and waits for the broker.
func (h *harness) send(ds ...deposit) {
	h.t.Helper()
	msgs := make([]*transport.Message, len(ds))
	for i, d := range ds {
		payload, _ := proto.Marshal(wrapperspb.Int64(d.amount))
		msgs[i] = envelope.Encode("test.", "/test", outbox.Record{
			ID: d.id, AggregateType: "deposit", AggregateID: d.account,
			Type: "google.protobuf.Int64Value", Payload: payload, CreatedAt: time.Now(),
		}, nil)
	}
	h.sendRaw(msgs...)
}

// sendRaw publishes msgs and waits until the broker acknowledged them all.
func (h *harness) sendRaw(msgs ...*transport.Message) {
	h.t.Helper()
	acked := make(chan struct{}, len(msgs))
	ctx := context.Background()
	for _, m := range msgs {
		if err := h.pub.Publish(ctx, m, func(transport.Delivery) { acked <- struct{}{} }); err != nil {
			h.t.Fatal(err)
		}
	}
	for range msgs {
		select {
		case <-acked:
		case err := <-h.pub.Failed():
			h.t.Fatal(err)
		}
	}
}

func applyDeposit(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
	_, err := tx.Exec(ctx, `INSERT INTO balances (account, total, deposits) VALUES ($1, $2, 1)
		ON CONFLICT (account) DO UPDATE SET total = balances.total + $2, deposits = balances.deposits + 1`, md.Key, v.Value)
	return err
}

func (h *harness) config(group string) consumer.Config {
	return consumer.Config{
		Transport:  h.tr,
		Group:      group,
		Topics:     []string{topic},
		Pool:       h.pool,
		Backoff:    10 * time.Millisecond,
		MaxBackoff: 50 * time.Millisecond,
	}
}

// run starts a consumer with the deposit handler (or wrap's variant of it).
func (h *harness) run(cfg consumer.Config, handler consumer.Handler[*wrapperspb.Int64Value]) (c *consumer.Consumer, stop func()) {
	h.t.Helper()
	if handler == nil {
		handler = applyDeposit
	}
	c, err := consumer.New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	consumer.Handle(c, handler)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil {
			h.t.Errorf("consumer.Run: %v", err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	h.t.Cleanup(stop)
	return c, stop
}

func (h *harness) balances() map[string][2]int64 {
	h.t.Helper()
	rows, err := h.pool.Query(context.Background(), "SELECT account, total, deposits FROM balances")
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string][2]int64{}
	for rows.Next() {
		var a string
		var total, n int64
		if err := rows.Scan(&a, &total, &n); err != nil {
			h.t.Fatal(err)
		}
		out[a] = [2]int64{total, n}
	}
	if err := rows.Err(); err != nil {
		h.t.Fatal(err)
	}
	return out
}

func (h *harness) depositCount() int64 {
	var n int64
	for _, b := range h.balances() {
		n += b[1]
	}
	return n
}

func expected(ds []deposit) map[string][2]int64 {
	want := map[string][2]int64{}
	for _, d := range ds {
		w := want[d.account]
		want[d.account] = [2]int64{w[0] + d.amount, w[1] + 1}
	}
	return want
}

func checkBalances(t testing.TB, got, want map[string][2]int64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d accounts, want %d", len(got), len(want))
	}
	for a, w := range want {
		if got[a] != w {
			t.Fatalf("account %s: (total, deposits) = %v, want %v", a, got[a], w)
		}
	}
}

// The same event delivered twice, and the whole topic delivered again after
// the group's offsets are rewound, changes the state once.
func TestDuplicatesAppliedOnce(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		var ds []deposit
		for i := 0; i < 50; i++ {
			ds = append(ds, newDeposit(fmt.Sprintf("acct-%d", i%5), int64(i+1)))
		}
		h.send(ds...)
		h.send(ds[7], ds[7], ds[30]) // redeliveries of the same events
		c, stop := h.run(h.config("dedup"), nil)
		testkit.WaitFor(t, time.Minute, "all deposits and duplicates", func() bool {
			s := c.Stats()
			return s.Processed+s.Duplicates == 53
		})
		checkBalances(t, h.balances(), expected(ds))
		if s := c.Stats(); s.Processed != 50 || s.Duplicates != 3 {
			t.Fatalf("stats %+v, want 50 processed and 3 duplicates", s)
		}
		stop()

		// Rewind the group to the start of every partition and consume again.
		h.bus.Rewind(t, "dedup", topic)
		c2, _ := h.run(h.config("dedup"), nil)
		testkit.WaitFor(t, time.Minute, "the rewound topic to be consumed again", func() bool { return c2.Stats().Duplicates == 53 })
		checkBalances(t, h.balances(), expected(ds))
		if s := c2.Stats(); s.Processed != 0 {
			t.Fatalf("after rewind: %+v, want nothing processed again", s)
		}
	})
}

// A handler failing transiently is retried and its event applied once.
func TestTransientFailureRetried(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		flaky := newDeposit("acct-flaky", 100)
		var mu sync.Mutex
		failures := 0
		c, _ := h.run(h.config("retry"), func(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
			// Change state first: a failed attempt must leave nothing behind.
			if err := applyDeposit(ctx, tx, v, md); err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			if md.ID == flaky.id && failures < 2 {
				failures++
				return errors.New("downstream hiccup")
			}
			return nil
		})
		h.send(flaky, newDeposit("acct-other", 1))
		testkit.WaitFor(t, time.Minute, "both deposits", func() bool { return c.Stats().Processed == 2 })
		checkBalances(t, h.balances(), map[string][2]int64{"acct-flaky": {100, 1}, "acct-other": {1, 1}})
		if s := c.Stats(); s.Retries != 2 || s.DeadLettered != 0 {
			t.Fatalf("stats %+v, want 2 retries and nothing dead-lettered", s)
		}
	})
}

// A poison message ends in <topic>.dlq with its headers, and the messages
// after it on the same partition are still applied.
func TestPoisonMessageDeadLettered(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		cfg := h.config("poison")
		cfg.MaxAttempts = 3
		c, _ := h.run(cfg, func(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
			if err := applyDeposit(ctx, tx, v, md); err != nil {
				return err
			}
			if v.Value < 0 {
				return fmt.Errorf("negative deposit %d", v.Value)
			}
			return nil
		})
		poison := newDeposit("acct-1", -5)
		before := newDeposit("acct-1", 10)
		after := []deposit{newDeposit("acct-1", 20), newDeposit("acct-1", 30)}
		h.send(before, poison)
		// An undecodable payload and a message without CloudEvents headers,
		// same key so same partition.
		garbage := envelope.Encode("test.", "/test", outbox.Record{ID: uuid.New(), AggregateType: "deposit", AggregateID: "acct-1",
			Type: "google.protobuf.Int64Value", Payload: []byte{0xff, 0xff, 0xff}, CreatedAt: time.Now()}, nil)
		h.sendRaw(garbage)
		h.sendRaw(&transport.Message{Topic: topic, Key: []byte("acct-1"), Value: []byte("hi")})
		h.send(after...)

		testkit.WaitFor(t, time.Minute, "good deposits around the poison", func() bool { return c.Stats().Processed == 3 })
		checkBalances(t, h.balances(), map[string][2]int64{"acct-1": {60, 3}})
		if s := c.Stats(); s.DeadLettered != 3 || s.Retries != 2 {
			t.Fatalf("stats %+v, want 3 dead-lettered (poison after 3 attempts, garbage, headerless) and 2 retries", s)
		}
		dlq := h.bus.ReadDeadLetters(t, topic, time.Minute, func(m []*transport.Message) bool { return len(m) == 3 })
		first := envelope.Headers(dlq[0])
		if first[envelope.HeaderID] != poison.id.String() || string(dlq[0].Key) != "acct-1" {
			t.Fatalf("first DLQ message is %v, want the poison deposit %s", first, poison.id)
		}
		for k, want := range map[string]string{
			consumer.HeaderDLQError:    fmt.Sprintf("handle google.protobuf.Int64Value %s: negative deposit -5", poison.id),
			consumer.HeaderDLQTopic:    topic,
			consumer.HeaderDLQGroup:    "poison",
			consumer.HeaderDLQAttempts: "3",
			envelope.HeaderType:        "google.protobuf.Int64Value",
		} {
			if first[k] != want {
				t.Errorf("DLQ header %s = %q, want %q", k, first[k], want)
			}
		}
		if first[consumer.HeaderDLQPartition] == "" || first[consumer.HeaderDLQOffset] == "" {
			t.Errorf("DLQ headers lack the original partition/offset: %v", first)
		}
		for _, m := range dlq[1:] {
			if e := envelope.Headers(m)[consumer.HeaderDLQError]; e == "" || envelope.Headers(m)[consumer.HeaderDLQAttempts] != "1" {
				t.Errorf("undecodable message dead-lettered with headers %v, want an error after 1 attempt", envelope.Headers(m))
			}
		}
	})
}

// A handler that panics on one event does not crash the process (at every
// redelivery, on every member): the event is dead-lettered alone, at its
// first attempt, and the events around it are applied. A panic in a hook
// after the commit is logged; its event stays applied.
func TestPanickingHandlerDeadLettered(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		c, _ := h.run(h.config("panic"), func(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
			switch v.Value {
			case -1:
				var seen []int64
				_ = seen[-v.Value] // a bug: index out of range
			case 7:
				md.AfterCommit(func(context.Context) { panic("after the commit") })
			}
			return applyDeposit(ctx, tx, v, md)
		})
		bad := newDeposit("acct-1", -1)
		h.send(newDeposit("acct-1", 10), bad, newDeposit("acct-1", 7), newDeposit("acct-1", 20))
		testkit.WaitFor(t, time.Minute, "the deposits around the panic", func() bool { return c.Stats().Processed == 3 })
		checkBalances(t, h.balances(), map[string][2]int64{"acct-1": {37, 3}})
		dlq := h.bus.ReadDeadLetters(t, topic, time.Minute, func(m []*transport.Message) bool { return len(m) == 1 })
		headers := envelope.Headers(dlq[0])
		if headers[envelope.HeaderID] != bad.id.String() || headers[consumer.HeaderDLQAttempts] != "1" ||
			!strings.Contains(headers[consumer.HeaderDLQError], "handler panicked: runtime error: index out of range") {
			t.Fatalf("dead-lettered %v, want the panicking deposit %s after 1 attempt, saying it panicked", headers, bad.id)
		}
	})
}

// Two instances in one group split the partitions and, across rebalances
// (one joining, then one leaving mid-stream), apply every event once.
func TestGroupRebalanceAppliesOnce(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		var ds []deposit
		for i := 0; i < 2000; i++ {
			ds = append(ds, newDeposit(fmt.Sprintf("acct-%02d", i%40), int64(i%7+1)))
		}
		slow := func(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
			time.Sleep(time.Millisecond) // keep work in flight during rebalances
			return applyDeposit(ctx, tx, v, md)
		}
		a, stopA := h.run(h.config("group"), slow)
		h.send(ds[:700]...)
		testkit.WaitFor(t, time.Minute, "instance A to start", func() bool { return a.Stats().Processed > 100 })
		b, _ := h.run(h.config("group"), slow)
		// Wait for the rebalance itself, not for B to win a race against A for
		// messages already sent: then what is sent next is split between them.
		testkit.WaitFor(t, time.Minute, "instance B to own partitions", func() bool {
			return b.Stats().Partitions > 0 && a.Stats().Partitions > 0 && a.Stats().Partitions+b.Stats().Partitions == 4
		})
		h.send(ds[700:1400]...)
		testkit.WaitFor(t, time.Minute, "instance B to apply deposits", func() bool { return b.Stats().Processed > 0 })
		stopA()
		h.send(ds[1400:]...)
		testkit.WaitFor(t, 2*time.Minute, "every deposit", func() bool {
			return a.Stats().Processed+b.Stats().Processed >= uint64(len(ds))
		})
		checkBalances(t, h.balances(), expected(ds))
		sa, sb := a.Stats(), b.Stats()
		if sa.Processed+sb.Processed != uint64(len(ds)) {
			t.Fatalf("A %+v + B %+v processed, want %d in total", sa, sb, len(ds))
		}
		t.Logf("A processed %d, B %d, duplicates skipped %d", sa.Processed, sb.Processed, sa.Duplicates+sb.Duplicates)
	})
}

// A handler stuck on one event (as if its database hung) does not stall the
// group: when a second instance joins, the partitions change hands and the
// events sent to every other partition are applied while the handler still
// hangs (Kafka's eager rebalance even cancels it after RevokeTimeout; Redis
// moves only the partitions that change owner). When the stuck instance
// goes away, the partition's next owner applies the stuck event, once.
func TestStuckHandlerDoesNotStallRebalance(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		stuck := newDeposit("acct-stuck", 7)
		stuckPart := transport.Partition([]byte(stuck.account), 4)
		cfg := h.config("stuck")
		cfg.RevokeTimeout = 500 * time.Millisecond
		entered := make(chan struct{})
		var once sync.Once
		a, stopA := h.run(cfg, func(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
			hang := false
			once.Do(func() { hang = true; close(entered) })
			if hang {
				<-ctx.Done() // the first attempt hangs until cancelled
				return ctx.Err()
			}
			return applyDeposit(ctx, tx, v, md)
		})
		h.send(stuck)
		select {
		case <-entered:
		case <-time.After(time.Minute):
			t.Fatal("instance A never received the event")
		}
		b, _ := h.run(cfg, nil)
		testkit.WaitFor(t, time.Minute, "the partitions to be shared", func() bool {
			sa, sb := a.Stats(), b.Stats()
			return sb.Partitions > 0 && sa.Partitions > 0 && sa.Partitions+sb.Partitions == 4
		})
		var others []deposit
		for _, k := range keysOutside(stuckPart, 20) {
			others = append(others, newDeposit(k, 1))
		}
		h.send(others...)
		testkit.WaitFor(t, time.Minute, "the other partitions' events after the rebalance", func() bool {
			return h.depositCount() >= int64(len(others))
		})
		stopA()
		testkit.WaitFor(t, time.Minute, "the stuck event to be applied once its instance is gone", func() bool {
			return h.depositCount() == int64(len(others))+1
		})
		checkBalances(t, h.balances(), expected(append(others, stuck)))
	})
}

// Inbox rows older than the retention are pruned; recent ones stay.
func TestInboxPruned(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		ctx := context.Background()
		if err := consumer.Migrate(ctx, h.pool); err != nil {
			t.Fatal(err)
		}
		for _, g := range []string{"prune", "other-group"} {
			if _, err := h.pool.Exec(ctx, `INSERT INTO inbox (consumer_group, event_id, event_type, processed_at)
			VALUES ($1, $2, 't', now() - interval '3 hours')`, g, uuid.New()); err != nil {
				t.Fatal(err)
			}
		}
		cfg := h.config("prune")
		cfg.InboxRetention = time.Hour
		cfg.PruneInterval = 20 * time.Millisecond
		c, _ := h.run(cfg, nil)
		h.send(newDeposit("acct-1", 1))
		testkit.WaitFor(t, time.Minute, "the deposit", func() bool { return c.Stats().Processed == 1 })
		count := func(group string) int {
			var n int
			if err := h.pool.QueryRow(ctx, "SELECT count(*) FROM inbox WHERE consumer_group = $1", group).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		testkit.WaitFor(t, 30*time.Second, "the old row to be pruned", func() bool { return count("prune") == 1 })
		if n := count("other-group"); n != 1 {
			t.Fatalf("another group's inbox rows were pruned (%d left)", n)
		}
	})
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	tr, err := broker.New(broker.Config{Brokers: "x:1"})
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]consumer.Config{
		"no transport": {Group: "g", Topics: []string{"t"}, Pool: &pgxpool.Pool{}},
		"no group":     {Transport: tr, Topics: []string{"t"}, Pool: &pgxpool.Pool{}},
		"no topics":    {Transport: tr, Group: "g", Pool: &pgxpool.Pool{}},
		"no pool":      {Transport: tr, Group: "g", Topics: []string{"t"}},
	} {
		if _, err := consumer.New(cfg); err == nil {
			t.Errorf("%s: New accepted the config", name)
		}
	}
}
