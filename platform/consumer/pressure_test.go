package consumer_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
)

// keysOutside returns n account names none of which falls in partition p of
// the test topic (4 partitions).
func keysOutside(p int32, n int) []string {
	var keys []string
	for i := 0; len(keys) < n; i++ {
		k := fmt.Sprintf("acct-%d", i)
		if transport.Partition([]byte(k), 4) != p {
			keys = append(keys, k)
		}
	}
	return keys
}

// A partition whose handler is stuck, with far more messages behind it than
// the consumer buffers, does not stop the other partitions: the polling
// loop pauses that partition instead of blocking on it.
func TestStuckPartitionDoesNotStopOthers(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		const stuckKey = "acct-stuck"
		stuckPart := transport.Partition([]byte(stuckKey), 4)
		release := make(chan struct{})
		c, _ := h.run(h.config("stuck-partition"), func(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
			if md.Key == stuckKey {
				select {
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return applyDeposit(ctx, tx, v, md)
		})
		var stuck []deposit
		for i := 0; i < 5000; i++ { // more than any in-memory buffer holds
			stuck = append(stuck, newDeposit(stuckKey, 1))
		}
		h.send(stuck...)
		var others []deposit
		for _, k := range keysOutside(stuckPart, 30) {
			others = append(others, newDeposit(k, 2))
		}
		h.send(others...)
		testkit.WaitFor(t, time.Minute, "the other partitions' deposits while one partition is stuck", func() bool {
			return c.Stats().Processed == uint64(len(others))
		})
		close(release)
		testkit.WaitFor(t, 2*time.Minute, "the stuck partition to catch up", func() bool {
			return c.Stats().Processed == uint64(len(others)+len(stuck))
		})
		checkBalances(t, h.balances(), expected(append(stuck, others...)))
	})
}

// Contention (serialization failures, deadlocks) and a database going away
// are retried without spending the event's attempts: with MaxAttempts 2,
// an event failing transiently five times is still applied, not
// dead-lettered.
func TestTransientDatabaseErrorsDoNotSpendAttempts(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		cfg := h.config("transient")
		cfg.MaxAttempts = 2
		codes := []string{"40001", "40P01", "57P01", "57014", "08006"}
		var calls atomic.Int32
		c, _ := h.run(cfg, func(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
			if n := int(calls.Add(1)); n <= len(codes) {
				return fmt.Errorf("update balance: %w", &pgconn.PgError{Code: codes[n-1], Message: "simulated"})
			}
			return applyDeposit(ctx, tx, v, md)
		})
		d := newDeposit("acct-1", 5)
		h.send(d)
		testkit.WaitFor(t, time.Minute, "the deposit after transient failures", func() bool { return c.Stats().Processed == 1 })
		if s := c.Stats(); s.DeadLettered != 0 || s.Retries != uint64(len(codes)) {
			t.Fatalf("stats %+v, want %d retries and nothing dead-lettered", s, len(codes))
		}
		checkBalances(t, h.balances(), map[string][2]int64{"acct-1": {5, 1}})
	})
}

// A consumer started while the broker is down waits for it instead of
// failing, and then consumes.
func TestRunWaitsForTheBroker(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		h.send(newDeposit("acct-1", 3))
		h.bus.Stop()
		c, _ := h.run(h.config("late-broker"), nil)
		if err := h.bus.Start(); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, time.Minute, "the deposit once the broker is back", func() bool { return c.Stats().Processed == 1 })
	})
}

// rawEvent builds an event of any type with the given write time.
func rawEvent(key, typ string, payload proto.Message, written time.Time) *transport.Message {
	b, _ := proto.Marshal(payload)
	return envelope.Encode("test.", "/test", outbox.Record{ID: uuid.New(), AggregateType: "deposit", AggregateID: key,
		Type: typ, Payload: b, CreatedAt: written}, nil)
}

// A command type this build does not know (in a package of HoldPackages)
// holds its partition until a build that knows it takes over; a known type
// without a handler is skipped, and so is an unknown type of another
// package.
func TestUnknownEventTypes(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		future := rawEvent("acct-1", "switchyard.future.v9.SomethingNew", wrapperspb.Int64(1), time.Now())
		known := rawEvent("acct-1", "google.protobuf.StringValue", wrapperspb.String("not for us"), time.Now())
		after := newDeposit("acct-1", 7)
		h.sendRaw(known, future)
		h.send(after)

		hcfg := h.config("hold")
		hcfg.HoldPackages = []string{"switchyard.future.v9"}
		held, stopHeld := h.run(hcfg, nil)
		testkit.WaitFor(t, time.Minute, "the unknown type to be held", func() bool { return held.Stats().Held >= 2 })
		if s := held.Stats(); s.Processed != 0 || s.Skipped != 1 {
			t.Fatalf("holding consumer: %+v, want the known type skipped and nothing after the unknown one applied", s)
		}
		stopHeld()

		scfg := h.config("skip")
		var logs testkit.Logs
		scfg.Logger = logs.Logger()
		skip, _ := h.run(scfg, nil)
		testkit.WaitFor(t, time.Minute, "the deposit behind the unknown type", func() bool { return skip.Stats().Processed == 1 })
		if s := skip.Stats(); s.Skipped != 2 {
			t.Fatalf("skipping consumer: %+v, want 2 skipped", s)
		}
		// Most types on a shared topic are other groups' business: said
		// once, at info.
		const line = `level=INFO msg="event type unknown to this build and not a command for this group; skipping such events"`
		if n := strings.Count(logs.String(), line); n != 1 || strings.Contains(logs.String(), `level=WARN msg="event type unknown`) {
			t.Fatalf("the skipping consumer logged the unknown type %d times at info (want once), and these lines:\n%s", n, logs.String())
		}
	})
}

// An event written longer ago than the inbox keeps its rows may have been
// applied already: it is dead-lettered, never applied.
func TestEventOlderThanInboxRetentionNotApplied(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		cfg := h.config("old")
		cfg.InboxRetention = time.Hour
		old := rawEvent("acct-old", "google.protobuf.Int64Value", wrapperspb.Int64(100), time.Now().Add(-2*time.Hour))
		fresh := newDeposit("acct-old", 1)
		h.sendRaw(old)
		h.send(fresh)
		c, _ := h.run(cfg, nil)
		testkit.WaitFor(t, time.Minute, "the fresh deposit", func() bool { return c.Stats().Processed == 1 })
		if s := c.Stats(); s.DeadLettered != 1 {
			t.Fatalf("stats %+v, want the old event dead-lettered", s)
		}
		checkBalances(t, h.balances(), map[string][2]int64{"acct-old": {1, 1}})
	})
}
