package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/switchyard/switchyard/platform/backoff"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/pgerr"
	"github.com/switchyard/switchyard/platform/transport"
)

// ready is a decoded event that can go into a batch transaction.
type ready struct {
	msg    *transport.Message
	md     Metadata
	h      handler
	event  proto.Message
	parent context.Context // the sender's trace
}

// prepare decodes msg for the batch path. It returns ok=false for anything
// that needs a decision of its own (an undecodable message, an unknown
// type, an event too old to apply, a poison backstop): process handles
// those one at a time.
func (c *Consumer) prepare(ctx context.Context, msg *transport.Message) (ready, bool) {
	if msg.Deliveries > c.cfg.MaxDeliveries {
		return ready{}, false
	}
	md := Metadata{Topic: msg.Topic, Partition: msg.Partition, Offset: msg.Offset, Position: msg.Position, Key: string(msg.Key), Attempt: 1}
	var err error
	if md.Metadata, err = envelope.Decode(msg); err != nil {
		return ready{}, false
	}
	h, ok := c.handlers[protoreflect.FullName(md.Type)]
	if !ok || (!md.Time.IsZero() && time.Since(md.Time) > c.cfg.InboxRetention) {
		return ready{}, false
	}
	event := h.newMsg()
	if proto.Unmarshal(msg.Value, event) != nil {
		return ready{}, false
	}
	parent := propagation.TraceContext{}.Extract(ctx, envelope.TraceCarrier(msg))
	return ready{msg: msg, md: md, h: h, event: event, parent: parent}, true
}

// applyBatch applies what has arrived on a partition, in order: runs of
// ordinary events in one transaction each, anything else one at a time.
// It returns false if ctx ended or the partition was lost first.
func (c *Consumer) applyBatch(ctx context.Context, cl transport.Claim, batch []*transport.Message) bool {
	for i := 0; i < len(batch); {
		var run []ready
		for ; i < len(batch); i++ {
			r, ok := c.prepare(ctx, batch[i])
			if !ok {
				break
			}
			run = append(run, r)
		}
		if !c.applyRun(ctx, cl, run) {
			return false
		}
		if i < len(batch) {
			if !c.process(ctx, cl, batch[i]) || !c.commit(ctx, cl, batch[i]) {
				return false
			}
			i++
		}
	}
	return true
}

// applyRun applies run in one transaction (one message alone takes the
// ordinary path). If the transaction fails because of a handler, the run
// is applied again one message per transaction, so that a poison message is
// retried and dead-lettered alone.
func (c *Consumer) applyRun(ctx context.Context, cl transport.Claim, run []ready) bool {
	if len(run) <= 1 {
		for _, r := range run {
			if !c.process(ctx, cl, r.msg) || !c.commit(ctx, cl, r.msg) {
				return false
			}
		}
		return true
	}
	retry := backoff.New(c.cfg.Backoff, c.cfg.MaxBackoff)
	for {
		applied, dups, err := c.applyTx(ctx, cl, run)
		if err == nil {
			c.processed.Add(uint64(applied))
			c.duplicates.Add(uint64(dups))
			msgs := make([]*transport.Message, len(run))
			for i, r := range run {
				msgs[i] = r.msg
			}
			return c.commit(ctx, cl, msgs...)
		}
		if ctx.Err() != nil || errors.Is(err, errFenced) {
			return false
		}
		if !isTransient(err) || pgerr.Conflict(err) {
			// A handler's failure, or a conflict with another transaction
			// that the same batch would likely meet again: one event per
			// transaction isolates the first and holds fewer locks in the
			// second.
			c.cfg.Logger.Info("batch failed; applying its events one by one", "events", len(run), "error", err)
			for _, r := range run {
				if !c.process(ctx, cl, r.msg) || !c.commit(ctx, cl, r.msg) {
					return false
				}
			}
			return true
		}
		c.cfg.Logger.Warn("batch failed; retrying", "events", len(run), "error", err, "retry_in", retry.Next())
		c.retries.Add(1)
		if !retry.Wait(ctx) {
			return false
		}
	}
}

// applyTx runs the handlers of run in one transaction, with the inbox rows
// of the whole run written in one statement.
func (c *Consumer) applyTx(ctx context.Context, cl transport.Claim, run []ready) (applied, dups int, err error) {
	// The batch's own statements go into the first event's trace.
	bctx, bspan := c.startSpan(run[0].parent, run[0].md)
	bspan.SetAttributes(attribute.Int("messaging.batch.message_count", len(run)))
	defer func() {
		if err != nil {
			bspan.RecordError(err)
			bspan.SetStatus(codes.Error, err.Error())
		}
		bspan.End()
	}()
	// The lock bound is set in the same round trip as BEGIN.
	tx, err := c.cfg.Pool.BeginTx(bctx, pgx.TxOptions{
		BeginQuery: fmt.Sprintf("BEGIN; SET LOCAL lock_timeout = %d", c.cfg.BatchLockTimeout.Milliseconds()),
	})
	if err != nil {
		return 0, 0, infraError{fmt.Errorf("begin: %w", err)}
	}
	defer tx.Rollback(context.Background())
	ids := make([]uuid.UUID, len(run))
	types := make([]string, len(run))
	for i, r := range run {
		ids[i], types[i] = r.md.ID, r.md.Type
	}
	b := &pgx.Batch{}
	fenced := c.queueFence(b, cl)
	b.Queue(`INSERT INTO inbox (consumer_group, event_id, event_type)
		SELECT $1, id, type FROM unnest($2::uuid[], $3::text[]) AS u(id, type)
		ON CONFLICT DO NOTHING RETURNING event_id`, c.cfg.Group, ids, types)
	br := tx.SendBatch(bctx, b)
	if err := fenced(br); err != nil {
		br.Close()
		return 0, 0, err
	}
	fresh := map[uuid.UUID]bool{}
	rows, err := br.Query()
	if err == nil {
		for rows.Next() {
			var id uuid.UUID
			if err = rows.Scan(&id); err != nil {
				break
			}
			fresh[id] = true
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, 0, infraError{fmt.Errorf("record in inbox: %w", err)}
	}
	hooks := &txHooks{}
	for i, r := range run {
		r.md.hooks = hooks
		if !fresh[r.md.ID] {
			dups++
			continue
		}
		delete(fresh, r.md.ID) // the same event twice in one batch applies once
		hctx, span := bctx, bspan
		if i > 0 {
			hctx, span = c.startSpan(r.parent, r.md)
		}
		if err := r.h.apply(hctx, tx, r.event, r.md); err != nil {
			if i > 0 {
				span.RecordError(err)
				span.End()
			}
			return 0, 0, fmt.Errorf("handle %s %s: %w", r.md.Type, r.md.ID, err)
		}
		if i > 0 {
			span.End()
		}
		applied++
	}
	if err := hooks.flush(bctx, tx, c.cfg.Logger); err != nil {
		return 0, 0, fmt.Errorf("handle batch of %d events: %w", len(run), err)
	}
	if err := commitTx(bctx, tx); err != nil {
		return 0, 0, infraError{fmt.Errorf("commit: %w", err)}
	}
	hooks.run(bctx, c.cfg.Logger)
	return applied, dups, nil
}

// commit tells the transport msgs are done, retrying until it has: a
// transport that acknowledges each message (Redis Streams) would otherwise
// keep one whose acknowledgement failed pending for as long as the
// partition stays here, holding back trimming and never counted done. It
// returns false when the partition was lost or ctx ended first (the next
// owner gets the messages again and the inbox absorbs them).
func (c *Consumer) commit(ctx context.Context, cl transport.Claim, msgs ...*transport.Message) bool {
	retry := backoff.New(c.cfg.Backoff, c.cfg.MaxBackoff)
	for {
		err := cl.Commit(ctx, msgs...)
		if err == nil {
			return true
		}
		if errors.Is(err, transport.ErrFenced) {
			c.cfg.Logger.Info("partition lost; stopping its work", "topic", cl.Topic(), "partition", cl.Partition())
			return false
		}
		if ctx.Err() != nil {
			return false
		}
		c.cfg.Logger.Warn("commit position failed; retrying", "topic", cl.Topic(), "partition", cl.Partition(), "error", err, "retry_in", retry.Next())
		if !retry.Wait(ctx) {
			return false
		}
	}
}
