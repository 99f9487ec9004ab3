package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/switchyard/switchyard/platform/backoff"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/pgerr"
	"github.com/switchyard/switchyard/platform/transport"
)

// errFenced means the partition's ownership moved on while this member
// worked on it: the transaction was rolled back and the member must stop.
var errFenced = fmt.Errorf("consumer: %w", transport.ErrFenced)

// process handles one message until it is applied, recognised as a
// duplicate, skipped or dead-lettered. It returns false if ctx ended or the
// partition was lost first.
func (c *Consumer) process(ctx context.Context, cl transport.Claim, msg *transport.Message) bool {
	md := Metadata{Topic: msg.Topic, Partition: msg.Partition, Offset: msg.Offset, Position: msg.Position, Key: string(msg.Key)}
	log := c.cfg.Logger.With("topic", md.Topic, "partition", md.Partition, "position", md.Position)

	if msg.Deliveries > c.cfg.MaxDeliveries {
		return c.deadLetter(ctx, cl, msg, Permanent(fmt.Errorf("delivered %d times without being processed", msg.Deliveries)), 0, log)
	}
	var err error
	md.Metadata, err = envelope.Decode(msg)
	if err != nil {
		return c.deadLetter(ctx, cl, msg, Permanent(err), 1, log)
	}
	log = log.With("event_id", md.ID, "event_type", md.Type)
	h, ok := c.handlers[protoreflect.FullName(md.Type)]
	if !ok {
		return c.unhandled(ctx, md, log)
	}
	if !md.Time.IsZero() && time.Since(md.Time) > c.cfg.InboxRetention {
		return c.deadLetter(ctx, cl, msg, Permanent(fmt.Errorf(
			"event written %s ago, longer than the inbox retention (%s): it may have been applied already", time.Since(md.Time).Round(time.Second), c.cfg.InboxRetention)), 0, log)
	}
	event := h.newMsg()
	if err := proto.Unmarshal(msg.Value, event); err != nil {
		return c.deadLetter(ctx, cl, msg, Permanent(fmt.Errorf("decode %s: %w", md.Type, err)), 1, log)
	}

	parent := propagation.TraceContext{}.Extract(ctx, envelope.TraceCarrier(msg))
	retry := backoff.New(c.cfg.Backoff, c.cfg.MaxBackoff)
	for attempt := 1; ; attempt++ {
		md.Attempt = attempt
		dup, err := c.apply(parent, cl, h, event, md)
		if err == nil {
			if dup {
				c.duplicates.Add(1)
				log.Debug("duplicate event skipped")
			} else {
				c.processed.Add(1)
			}
			return true
		}
		if ctx.Err() != nil || errors.Is(err, errFenced) {
			return false
		}
		if isTransient(err) {
			// The database, not the message, is at fault: wait for it
			// without spending the message's attempts.
			attempt--
		} else if errors.Is(err, ErrPermanent) || attempt >= c.cfg.MaxAttempts {
			return c.deadLetter(ctx, cl, msg, err, attempt, log)
		}
		log.Warn("handler failed; retrying", "attempt", attempt, "error", err, "retry_in", retry.Next())
		c.retries.Add(1)
		if !retry.Wait(ctx) {
			return false
		}
	}
}

// unhandled decides about an event no handler is registered for. A type
// this build knows is one the group does not consume: skipped. A type it
// does not know, in a package of commands addressed to the group
// (HoldPackages), comes from a newer producer: held until a build that
// knows it takes over. Any other unknown type is skipped, logged once.
func (c *Consumer) unhandled(ctx context.Context, md Metadata, log *slog.Logger) bool {
	name := protoreflect.FullName(md.Type)
	_, err := protoregistry.GlobalTypes.FindMessageByName(name)
	if err == nil || !slices.Contains(c.cfg.HoldPackages, string(name.Parent())) {
		c.skipped.Add(1)
		if err != nil {
			c.unknownMu.Lock()
			first := !c.unknown[md.Type]
			c.unknown[md.Type] = true
			c.unknownMu.Unlock()
			if first {
				// Info, not a warning: on topics several groups read, most
				// types are other services' commands and events, which a
				// build links only if it handles them.
				log.Info("event type unknown to this build and not a command for this group; skipping such events")
			}
		}
		return true
	}
	retry := backoff.New(c.cfg.Backoff, c.cfg.MaxBackoff)
	for {
		c.held.Add(1)
		log.Warn("command type unknown to this build; holding the partition until a build that knows it takes over", "retry_in", retry.Next())
		if !retry.Wait(ctx) {
			return false
		}
	}
}

// apply runs the handler and the inbox insert in one transaction, after
// checking that this member still owns the partition. It reports dup=true
// when the inbox already held the event.
func (c *Consumer) apply(parent context.Context, cl transport.Claim, h handler, event proto.Message, md Metadata) (dup bool, err error) {
	ctx, span := c.startSpan(parent, md)
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.SetAttributes(attribute.Bool("switchyard.duplicate", dup))
		span.End()
	}()
	tx, err := c.cfg.Pool.Begin(ctx)
	if err != nil {
		return false, infraError{fmt.Errorf("begin: %w", err)}
	}
	defer tx.Rollback(context.Background())
	b := &pgx.Batch{}
	fenced := c.queueFence(b, cl)
	b.Queue(`INSERT INTO inbox (consumer_group, event_id, event_type) VALUES ($1, $2, $3)
		ON CONFLICT DO NOTHING`, c.cfg.Group, md.ID, md.Type)
	br := tx.SendBatch(ctx, b)
	if err := fenced(br); err != nil {
		br.Close()
		return false, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, infraError{fmt.Errorf("record in inbox: %w", err)}
	}
	if tag.RowsAffected() == 0 {
		// Committed, not rolled back: the fence's record of this owner's
		// epoch must stand even when its first event is a redelivery.
		if err := commitTx(ctx, tx); err != nil {
			return false, infraError{fmt.Errorf("commit: %w", err)}
		}
		return true, nil
	}
	md.hooks = &txHooks{}
	if err := h.apply(ctx, tx, event, md); err != nil {
		return false, fmt.Errorf("handle %s %s: %w", md.Type, md.ID, err)
	}
	if err := md.hooks.flush(ctx, tx, c.cfg.Logger); err != nil {
		return false, fmt.Errorf("handle %s %s: %w", md.Type, md.ID, err)
	}
	if err := commitTx(ctx, tx); err != nil {
		return false, infraError{fmt.Errorf("commit: %w", err)}
	}
	md.hooks.run(ctx, c.cfg.Logger)
	return false, nil
}

// startSpan starts the consumer span of one event, a child of the span
// that sent it.
func (c *Consumer) startSpan(parent context.Context, md Metadata) (context.Context, trace.Span) {
	system := c.cfg.Transport.System()
	return otel.Tracer(tracerName).Start(parent, "process "+md.Topic,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", system),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.operation.name", "process"),
			attribute.String("messaging.destination.name", md.Topic),
			attribute.String("messaging.consumer.group.name", c.cfg.Group),
			attribute.String("messaging.message.id", md.ID.String()),
			attribute.String("messaging.destination.partition.id", strconv.Itoa(int(md.Partition))),
			transport.PositionAttribute(system, md.Position),
			attribute.String("messaging."+system+".message.key", md.Key),
			attribute.String("cloudevents.event_type", md.Type),
			attribute.Int("switchyard.attempt", md.Attempt),
		))
}

// queueFence queues, first in b, the record of the claim's ownership epoch
// for its partition, and returns the check of its result: errFenced if a
// later owner has already written. The row lock it takes also orders this
// transaction after any still running of a former owner. Transports that
// do not fence (epoch 0) queue nothing. Queued with the inbox insert, the
// fence costs no round trip of its own.
func (c *Consumer) queueFence(b *pgx.Batch, cl transport.Claim) (check func(pgx.BatchResults) error) {
	epoch := cl.Epoch()
	if epoch <= 0 {
		return func(pgx.BatchResults) error { return nil }
	}
	b.Queue(`INSERT INTO consumer_epochs AS e (consumer_group, topic, partition, epoch) VALUES ($1, $2, $3, $4)
		ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET epoch = excluded.epoch WHERE e.epoch <= excluded.epoch`,
		c.cfg.Group, cl.Topic(), cl.Partition(), epoch)
	return func(br pgx.BatchResults) error {
		tag, err := br.Exec()
		if err != nil {
			return infraError{fmt.Errorf("check partition epoch: %w", err)}
		}
		if tag.RowsAffected() == 0 {
			return errFenced
		}
		return nil
	}
}

// infraError is a failure of the database rather than of the handler.
type infraError struct{ error }

func (e infraError) Unwrap() error { return e.error }

// isTransient reports whether err means the database could not be reached,
// the connection broke, or the transaction lost a race it can win on a
// retry (see package pgerr), or was marked with [Transient], as opposed to
// the handler rejecting the event.
func isTransient(err error) bool {
	var ie infraError
	return errors.As(err, &ie) || pgerr.Transient(err)
}

// deadLetter sends msg to the partition's dead-letter destination with the
// failure in its headers and commits it, retrying until the broker
// acknowledges it or ctx ends.
func (c *Consumer) deadLetter(ctx context.Context, cl transport.Claim, msg *transport.Message, cause error, attempts int, log *slog.Logger) bool {
	extra := []transport.Header{
		{Key: HeaderDLQError, Value: []byte(cause.Error())},
		{Key: HeaderDLQTopic, Value: []byte(msg.Topic)},
		{Key: HeaderDLQPartition, Value: []byte(strconv.Itoa(int(msg.Partition)))},
		{Key: HeaderDLQOffset, Value: []byte(msg.Position)},
		{Key: HeaderDLQGroup, Value: []byte(c.cfg.Group)},
		{Key: HeaderDLQAttempts, Value: []byte(strconv.Itoa(attempts))},
	}
	retry := backoff.New(c.cfg.Backoff, c.cfg.MaxBackoff)
	for {
		err := cl.DeadLetter(ctx, msg, extra)
		if err == nil {
			c.dead.Add(1)
			log.Error("message dead-lettered", "attempts", attempts, "error", cause)
			return true
		}
		log.Warn("dead-letter send failed; retrying", "error", err, "retry_in", retry.Next())
		if !retry.Wait(ctx) {
			return false
		}
	}
}

// commitTimeout bounds a COMMIT that outlives its consumer's context.
const commitTimeout = 10 * time.Second

// commitTx commits tx even if ctx ends meanwhile (the consumer stops, or
// its partition is revoked): a COMMIT cut off in flight may commit without
// the consumer learning it, and its event would then count as neither
// applied nor failed, and be a duplicate to the partition's next owner. A
// stop waits for a commit under way, up to commitTimeout.
func commitTx(ctx context.Context, tx pgx.Tx) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer cancel()
	return tx.Commit(ctx)
}
