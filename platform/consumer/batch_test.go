package consumer_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
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
		var rest []deposit
		for i := 0; i < 150; i++ {
			rest = append(rest, newDeposit(key, 2))
		}
		sendBehind(t, h, c, entered, first, rest)
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
		sendBehind(t, h, c2, entered2, blocker, batch)
		close(release2)
		testkit.WaitFor(t, time.Minute, "the batch around the poison event", func() bool {
			s := c2.Stats()
			return s.Processed == 151+3 && s.DeadLettered == 1
		})
	})
}

// Hooks registered with Metadata.AfterCommit run once per applied event,
// after its transaction committed (its writes are visible to others), and
// never for an attempt that rolled back: a batch sent back to one event per
// transaction by a poison event, a handler failing once, the poison event
// itself.
func TestAfterCommitHooks(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		ctx := context.Background()
		if _, err := h.pool.Exec(ctx, `CREATE TABLE applied (event uuid PRIMARY KEY)`); err != nil {
			t.Fatal(err)
		}
		const key = "acct-hooks"
		blocker := newDeposit(key, 1)
		batch := []deposit{newDeposit(key, 2), newDeposit(key, 3), newDeposit(key, -1), newDeposit(key, 4), newDeposit(key, 5)}
		flaky := batch[3].id
		release, entered := make(chan struct{}), make(chan struct{})
		var mu sync.Mutex
		ran := map[uuid.UUID]int{}
		var invisible []uuid.UUID
		failed := false
		cfg := h.config("hooks")
		cfg.MaxAttempts = 2
		c, _ := h.run(cfg, func(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
			if md.ID == blocker.id {
				close(entered)
				<-release
			}
			if _, err := tx.Exec(ctx, `INSERT INTO applied VALUES ($1)`, md.ID); err != nil {
				return err
			}
			md.AfterCommit(func(ctx context.Context) {
				var seen bool
				if err := h.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM applied WHERE event = $1)`, md.ID).Scan(&seen); err != nil {
					t.Error(err)
				}
				mu.Lock()
				defer mu.Unlock()
				ran[md.ID]++
				if !seen {
					invisible = append(invisible, md.ID)
				}
			})
			if v.Value < 0 {
				return consumer.Permanent(errors.New("poison"))
			}
			mu.Lock()
			defer mu.Unlock()
			if md.ID == flaky && !failed && md.Attempt == 1 && len(ran) > 1 {
				failed = true // once, on its own transaction after the batch fell apart
				return errors.New("downstream hiccup")
			}
			return nil
		})
		sendBehind(t, h, c, entered, blocker, batch)
		close(release)
		testkit.WaitFor(t, time.Minute, "every event applied or dead-lettered", func() bool {
			s := c.Stats()
			return s.Processed == 5 && s.DeadLettered == 1
		})
		mu.Lock()
		defer mu.Unlock()
		if !failed {
			t.Fatal("the flaky event never failed on its own transaction: the test did not test a rollback")
		}
		for _, d := range append([]deposit{blocker}, batch...) {
			want := 1
			if d.amount < 0 {
				want = 0
			}
			if ran[d.id] != want {
				t.Errorf("deposit of %d: hook ran %d times, want %d", d.amount, ran[d.id], want)
			}
		}
		if len(invisible) > 0 {
			t.Errorf("hooks of %v ran before their transaction's writes were visible", invisible)
		}
	})
}

// sendBehind sends blocker, waits until the handler holds it (entered is
// closed), then sends batch and waits until all of it is buffered behind
// the busy worker: once the handler lets go, batch is applied as one batch.
// (Not until the lag reads 0: on Kafka the lag is as of the last fetch
// response, which can show nothing left while part of batch is unfetched.)
func sendBehind(t *testing.T, h *harness, c *consumer.Consumer, entered <-chan struct{}, blocker deposit, batch []deposit) {
	t.Helper()
	h.send(blocker)
	select {
	case <-entered:
	case <-time.After(time.Minute):
		t.Fatal("the first deposit never reached the handler")
	}
	h.send(batch...)
	part := transport.Partition([]byte(blocker.account), 4)
	testkit.WaitFor(t, time.Minute, "the batch to be buffered behind the busy worker", func() bool {
		for _, l := range c.Lag() {
			if l.Partition == part {
				return l.Buffered == int64(len(batch))
			}
		}
		return false
	})
}

// A batch that waits for a row lock longer than BatchLockTimeout yields:
// it rolls back and applies its events one per transaction, which wait as
// long as they must. Here a transaction of the test holds the row every
// event of the batch updates; the batch gives up, and the first event's
// own transaction is then seen waiting in its place.
func TestBatchYieldsOnLockWait(t *testing.T) {
	eachTransport(t, func(t *testing.T, h *harness) {
		ctx := context.Background()
		if _, err := h.pool.Exec(ctx, `CREATE TABLE txlog (event uuid PRIMARY KEY, txid bigint NOT NULL)`); err != nil {
			t.Fatal(err)
		}
		const key = "acct-locked"
		if _, err := h.pool.Exec(ctx, `INSERT INTO balances VALUES ($1, 0, 0)`, key); err != nil {
			t.Fatal(err)
		}
		blocker := newDeposit(key, 0)
		release, entered := make(chan struct{}), make(chan struct{})
		cfg := h.config("yield")
		cfg.BatchLockTimeout = 50 * time.Millisecond
		c, _ := h.run(cfg, func(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
			if md.ID == blocker.id {
				close(entered)
				<-release
				return nil // touches no row
			}
			if _, err := tx.Exec(ctx, `INSERT INTO txlog VALUES ($1, txid_current())`, md.ID); err != nil {
				return err
			}
			return applyDeposit(ctx, tx, v, md)
		})
		var batch []deposit
		for range 5 {
			batch = append(batch, newDeposit(key, 1))
		}
		sendBehind(t, h, c, entered, blocker, batch)

		holder, err := h.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer holder.Rollback(ctx)
		if _, err := holder.Exec(ctx, `SELECT 1 FROM balances WHERE account = $1 FOR UPDATE`, key); err != nil {
			t.Fatal(err)
		}
		close(release)
		// The batch's transaction waits for the row, then a later one does.
		var first time.Time
		testkit.WaitFor(t, time.Minute, "a second transaction to wait for the row after the batch's gave up", func() bool {
			var started time.Time
			err := h.pool.QueryRow(ctx, `SELECT xact_start FROM pg_stat_activity
				WHERE wait_event_type = 'Lock' AND datname = current_database() ORDER BY xact_start LIMIT 1`).Scan(&started)
			if err != nil {
				return false // nobody waits yet
			}
			if first.IsZero() {
				first = started
			}
			return started.After(first)
		})
		if err := holder.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, time.Minute, "every deposit", func() bool { return c.Stats().Processed == 6 })
		checkBalances(t, h.balances(), map[string][2]int64{key: {5, 5}})
		var txs int
		if err := h.pool.QueryRow(ctx, `SELECT count(DISTINCT txid) FROM txlog`).Scan(&txs); err != nil {
			t.Fatal(err)
		}
		if txs != len(batch) {
			t.Fatalf("after yielding, the batch's %d events took %d transactions, want one each", len(batch), txs)
		}
	})
}

// Handlers of a batch gather their changes with consumer.Gather and one
// flush per transaction writes them in one statement; when a poison event
// sends the batch back to one event per transaction, each of those has a
// flush of its own and nothing of the rolled-back batch's flush stays.
func TestGatherFlushesOncePerTransaction(t *testing.T) {
	if _, err := consumer.Gather(consumer.Metadata{}, "k", func() *[]uuid.UUID { return nil }, nil); !errors.Is(err, consumer.ErrNoTransaction) {
		t.Errorf("Gather with a Metadata of no transaction: %v, want ErrNoTransaction", err)
	}
	flush := func(ctx context.Context, tx pgx.Tx, ids *[]uuid.UUID) error {
		_, err := tx.Exec(ctx, `INSERT INTO gathered SELECT id, txid_current(), cardinality($1::uuid[]) FROM unnest($1::uuid[]) AS id`, *ids)
		return err
	}
	for _, tc := range []struct {
		name    string
		amounts []int64 // a negative amount is a poison event
		wantTxs int     // transactions of the batch's applied events
	}{
		{"batch", []int64{1, 2, 3, 4}, 1},
		{"batch with a poison event", []int64{5, -1, 6}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachTransport(t, func(t *testing.T, h *harness) {
				ctx := context.Background()
				if _, err := h.pool.Exec(ctx, `CREATE TABLE gathered (event uuid PRIMARY KEY, txid bigint NOT NULL, flushed int NOT NULL)`); err != nil {
					t.Fatal(err)
				}
				const key = "acct-gather"
				blocker := newDeposit(key, 1)
				release, entered := make(chan struct{}), make(chan struct{})
				cfg := h.config("gather")
				cfg.MaxAttempts = 1
				// A value with no flush, written by one AfterCommit hook per
				// transaction (as a cache written through after the commit).
				var mu sync.Mutex
				var committed [][]uuid.UUID // per committed transaction
				c, _ := h.run(cfg, func(ctx context.Context, tx pgx.Tx, v *wrapperspb.Int64Value, md consumer.Metadata) error {
					if md.ID == blocker.id {
						close(entered)
						<-release
					}
					ids, err := consumer.Gather(md, "ids", func() *[]uuid.UUID { return new([]uuid.UUID) }, flush)
					if err != nil {
						return err
					}
					*ids = append(*ids, md.ID)
					after, err := consumer.Gather(md, "after", func() *[]uuid.UUID {
						v := new([]uuid.UUID)
						md.AfterCommit(func(context.Context) {
							mu.Lock()
							committed = append(committed, slices.Clone(*v))
							mu.Unlock()
						})
						return v
					}, nil)
					if err != nil {
						return err
					}
					*after = append(*after, md.ID)
					if v.Value < 0 {
						return consumer.Permanent(errors.New("poison"))
					}
					return nil
				})
				var batch []deposit
				for _, a := range tc.amounts {
					batch = append(batch, newDeposit(key, a))
				}
				sendBehind(t, h, c, entered, blocker, batch)
				close(release)
				testkit.WaitFor(t, time.Minute, "every event applied or dead-lettered", func() bool {
					s := c.Stats()
					return s.Processed+s.DeadLettered == uint64(1+len(batch))
				})
				var ids []uuid.UUID
				for _, d := range batch {
					if d.amount > 0 {
						ids = append(ids, d.id)
					}
				}
				var rows, txs, flushedAlone int
				if err := h.pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT txid), count(*) FILTER (WHERE flushed = 1)
					FROM gathered WHERE event = ANY($1)`, ids).Scan(&rows, &txs, &flushedAlone); err != nil {
					t.Fatal(err)
				}
				if rows != len(ids) || txs != tc.wantTxs {
					t.Errorf("%d of %d events written by %d transactions, want all by %d", rows, len(ids), txs, tc.wantTxs)
				}
				if tc.wantTxs == 1 && flushedAlone != 0 {
					t.Errorf("%d events flushed alone, want every one in the batch's flush", flushedAlone)
				}
				// The hooks saw exactly the committed events, one hook per
				// transaction of the batch's events.
				mu.Lock()
				defer mu.Unlock()
				var seen []uuid.UUID
				hooks := 0
				for _, got := range committed {
					if slices.Contains(got, blocker.id) {
						continue // the blocker's own transaction
					}
					hooks++
					seen = append(seen, got...)
				}
				slices.SortFunc(seen, func(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) })
				want := slices.Clone(ids)
				slices.SortFunc(want, func(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) })
				if hooks != tc.wantTxs || !slices.Equal(seen, want) {
					t.Errorf("after-commit hooks: %d saw %v; want %d seeing %v", hooks, seen, tc.wantTxs, want)
				}
			})
		})
	}
}
