package consumer_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
)

// What has arrived on a partition while its worker was busy is applied in
// one transaction, inbox rows included; a poison event inside such a batch
// sends the batch back to one event per transaction, so only the poison
// event is dead-lettered and everything else is applied once.
func TestBatchesAppliedInOneTransaction(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		ctx := context.Background()
		if _, err := h.pool.Exec(ctx, `CREATE TABLE txlog (event uuid PRIMARY KEY, txid bigint NOT NULL)`); err != nil {
			t.Fatal(err)
		}
		const key = "acct-batch"
		first := newDeposit(key, 1)
		release := make(chan struct{})
		entered := make(chan struct{})
		cfg := h.config("batch")
		cfg.MaxAttempts = 2
		c, _ := h.run(cfg, func(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
			if md.ID == first.id {
				close(entered)
				select { // hold the worker while the rest arrives
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			if v.Value < 0 {
				return consumer.Permanent(context.Canceled)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO txlog VALUES ($1, txid_current())`, md.ID); err != nil {
				return err
			}
			return applyDeposit(ctx, tx, v, md)
		})
		h.send(first)
		select {
		case <-entered:
		case <-time.After(time.Minute):
			t.Fatal("the first deposit never reached the handler")
		}
		var rest []deposit
		for i := 0; i < 150; i++ {
			rest = append(rest, newDeposit(key, 2))
		}
		h.send(rest...)
		part := transport.Partition([]byte(key), 4)
		testkit.WaitFor(t, time.Minute, "the rest to be fetched behind the busy worker", func() bool {
			for _, l := range c.Lag() {
				if l.Partition == part {
					return l.Messages == 0
				}
			}
			return false
		})
		close(release)
		testkit.WaitFor(t, time.Minute, "every deposit", func() bool { return c.Stats().Processed == 151 })
		var txs int
		if err := h.pool.QueryRow(ctx, `SELECT count(DISTINCT txid) FROM txlog WHERE event <> $1`, first.id).Scan(&txs); err != nil {
			t.Fatal(err)
		}
		if txs != 1 {
			t.Fatalf("150 deposits that arrived together took %d transactions, want 1", txs)
		}

		// A poison event in the middle of a batch.
		release2 := make(chan struct{})
		entered2 := make(chan struct{})
		blocker := newDeposit(key, 3)
		cfg2 := h.config("batch-poison")
		cfg2.MaxAttempts = 2
		c2, _ := h.run(cfg2, func(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
			if md.ID == blocker.id {
				close(entered2)
				<-release2
			}
			if v.Value < 0 {
				return consumer.Permanent(context.Canceled)
			}
			return nil // this group only counts
		})
		testkit.WaitFor(t, time.Minute, "the second group to catch up", func() bool { return c2.Stats().Processed == 151 })
		batch := []deposit{newDeposit(key, 4), newDeposit(key, -1), newDeposit(key, 5)}
		h.send(blocker)
		select {
		case <-entered2:
		case <-time.After(time.Minute):
			t.Fatal("the blocker never reached the handler")
		}
		h.send(batch...)
		testkit.WaitFor(t, time.Minute, "the batch to be fetched", func() bool {
			for _, l := range c2.Lag() {
				if l.Partition == part {
					return l.Messages == 0
				}
			}
			return false
		})
		close(release2)
		testkit.WaitFor(t, time.Minute, "the batch around the poison event", func() bool {
			s := c2.Stats()
			return s.Processed == 151+3 && s.DeadLettered == 1
		})
	})
}
