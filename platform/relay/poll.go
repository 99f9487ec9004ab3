package relay

import (
	"context"
	"fmt"
	"hash/fnv"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/switchyard/switchyard/platform/outbox"
)

// pollSource reads outbox rows in seq order and deletes them once the
// broker has acknowledged them. A session advisory lock held on the relay's
// connection admits one active relay per database.
//
// seq is assigned at insert, not at commit: a transaction that inserted
// earlier and commits later becomes visible after rows already sent. Per
// aggregate, order therefore holds only when the aggregate's writers
// serialize on it (lock its row before writing the event); cdc mode has no
// such condition.
type pollSource struct{}

// lockKey is the advisory lock that elects the active poll relay; a cdc
// relay holds it too while it publishes rows a poll relay left behind.
func lockKey(slot string) int64 { return advisoryKey("switchyard.relay." + slot) }

// advisoryKey maps a name to an advisory lock key.
func advisoryKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return int64(h.Sum64())
}

// tryRelayLock takes the relay's session advisory lock on conn if it is
// free and reports whether it did.
func tryRelayLock(ctx context.Context, conn *pgx.Conn, slot string) (bool, error) {
	var locked bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", lockKey(slot)).Scan(&locked); err != nil {
		return false, fmt.Errorf("take relay lock: %w", err)
	}
	return locked, nil
}

func (s *pollSource) prepare(ctx context.Context, cfg *Config) error {
	conn, err := connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	return outbox.Migrate(ctx, conn)
}

func (s *pollSource) run(ctx context.Context, r *Relay) error {
	cfg := &r.cfg
	conn, err := connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	locked, err := tryRelayLock(ctx, conn, cfg.Slot)
	if err != nil {
		return err
	}
	if !locked {
		return errStandby
	}
	pub, err := newPublisher(r)
	if err != nil {
		return err
	}
	defer pub.close()
	r.becameActive()
	cfg.Logger.Info("active: polling the outbox table")
	idle := time.Duration(0)
	for {
		n, err := publishBatch(ctx, r, conn, pub)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		r.progressed() // published new rows, or found none left
		if n > 0 {
			idle = 0
			continue
		}
		idle = nextIdle(idle, cfg.PollInterval)
		select {
		case <-ctx.Done():
			return nil
		case err := <-pub.failed():
			return err
		case <-time.After(idle):
		}
	}
}

// nextIdle is the pause after an empty poll: short right after events were
// published (more are likely on their way, and a broker that acknowledges
// fast would otherwise leave every event waiting for a full interval),
// doubling up to PollInterval while the table stays empty.
func nextIdle(last, max time.Duration) time.Duration {
	if last <= 0 {
		return min(time.Millisecond, max)
	}
	return min(2*last, max)
}

// publishBatch publishes up to BatchSize rows in seq order and deletes them
// after Kafka has acknowledged all of them, in one transaction: if anything
// fails, the rows stay and are sent again. The caller holds the relay lock.
func publishBatch(ctx context.Context, r *Relay, conn *pgx.Conn, pub *publisher) (int, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.Background())
	rows, err := tx.Query(ctx, `SELECT id, aggregatetype, aggregateid, type, payload, coalesce(tracingspancontext, ''), created_at
		FROM outbox ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED`, r.cfg.BatchSize)
	if err != nil {
		return 0, fmt.Errorf("read outbox: %w", err)
	}
	recs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (outbox.Record, error) {
		var rec outbox.Record
		err := row.Scan(&rec.ID, &rec.AggregateType, &rec.AggregateID, &rec.Type, &rec.Payload, &rec.TracingSpanContext, &rec.CreatedAt)
		return rec, err
	})
	if err != nil {
		return 0, fmt.Errorf("read outbox: %w", err)
	}
	if len(recs) == 0 {
		return 0, nil
	}
	r.pendingSince.Store(recs[0].CreatedAt.UnixNano())
	defer r.pendingSince.Store(0)
	// acked closes when Kafka has acknowledged the last record of the batch.
	acked := make(chan struct{})
	var remaining atomic.Int64
	remaining.Store(int64(len(recs)))
	ack := func() {
		r.acked()
		if remaining.Add(-1) == 0 {
			close(acked)
		}
	}
	ids := make([]uuid.UUID, len(recs))
	for i, rec := range recs {
		ids[i] = rec.ID
		if err := pub.publish(ctx, rec, ack); err != nil {
			return 0, publishError(rec, err)
		}
	}
	select {
	case <-acked:
	case err := <-pub.failed():
		return 0, err
	case <-ctx.Done():
		// Stopping: give Kafka a bounded time to acknowledge this batch.
		select {
		case <-acked:
		case <-time.After(r.cfg.ShutdownTimeout):
			return 0, ctx.Err()
		}
	}
	if _, err := tx.Exec(context.Background(), "DELETE FROM outbox WHERE id = ANY($1)", ids); err != nil {
		return 0, fmt.Errorf("delete published rows: %w", err)
	}
	if err := tx.Commit(context.Background()); err != nil {
		return 0, fmt.Errorf("commit published rows: %w", err)
	}
	return len(recs), nil
}
