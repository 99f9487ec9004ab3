// Package consumer applies events from a transport (Kafka or Redis Streams)
// to a PostgreSQL database exactly once in effect.
//
// Each partition this member of the group owns is applied in order by its
// own goroutine. Events are handled in a database transaction that also
// records (consumer group, event id) in the inbox table; a redelivered event
// finds its inbox row and is skipped. What has arrived on a partition while
// its worker was busy (up to [Config.MaxBatch]) is applied in one
// transaction, with the inbox rows of the whole batch written in one
// statement; at low load a batch is one event. A batch whose handler fails is
// applied again one event per transaction. The handler may change the service's
// tables and write outbox events in the same transaction; events it emits with
// [Emit] are written with the rest of its batch's, in one round trip before
// the commit. The transport is
// told an event is done (Kafka: offset stored; Redis: XACK) only after that
// transaction commits. Where the transport fences owners (Redis), the
// transaction also checks the partition's ownership epoch, so a former owner
// that was paused past its lease cannot apply anything.
//
// Failures are retried with exponential backoff. Failures of the database
// rather than of the event (connection lost, serialization failure,
// deadlock, shutdown, statement timeout) never spend the event's attempts,
// so contention cannot send a saga command to the dead-letter destination.
// After [Config.MaxAttempts] (or at once for errors wrapped with
// [Permanent], and for messages that cannot be decoded) the message goes to
// the dead-letter destination with the error in its headers and the
// partition moves on.
//
// The inbox keeps rows for [Config.InboxRetention]. An event older than that
// can no longer be recognised as a duplicate, so it is never applied: it is
// dead-lettered for an operator to look at. This is what keeps a group whose
// broker offsets were lost (Kafka drops the offsets of a group that stays
// empty longer than offsets.retention.minutes, 7 days by default) from
// re-applying old events when it starts again from the earliest one.
//
//	c, err := consumer.New(consumer.Config{Transport: tr, Group: "payments", Topics: []string{"switchyard.order"}, Pool: pool})
//	if err != nil {
//		return err
//	}
//	consumer.Handle(c, func(ctx context.Context, tx pgx.Tx, ev *wrapperspb.StringValue, md consumer.Metadata) error {
//		// Change tables and write outbox events through tx.
//		_, err := tx.Exec(ctx, "INSERT INTO seen (event_id, value) VALUES ($1, $2)", md.ID, ev.GetValue())
//		return err
//	})
//	return c.Run(ctx)
package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/switchyard/switchyard/platform/backoff"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/eventpb"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/transport"
)

const tracerName = "github.com/switchyard/switchyard/platform/consumer"

// DLQ header names, added to the original headers of a dead-lettered message.
const (
	HeaderDLQError     = "dlq_error"
	HeaderDLQTopic     = "dlq_original_topic"
	HeaderDLQPartition = "dlq_original_partition"
	HeaderDLQOffset    = "dlq_original_offset"
	HeaderDLQGroup     = "dlq_consumer_group"
	HeaderDLQAttempts  = "dlq_attempts"
)

// Metadata describes the event being handled.
type Metadata struct {
	envelope.Metadata
	Topic     string // where the message was read
	Partition int32  // its partition
	// Offset is its Kafka offset (-1 on transports without numeric offsets).
	Offset int64
	// Position is its position in the transport's notation.
	Position string
	// Key is the message key (the aggregate id).
	Key string
	// Attempt is 1 on the first try.
	Attempt int

	hooks *txHooks // of the transaction applying the event
}

// AfterCommit runs fn once the transaction that applies the event has
// committed, with the other hooks of that transaction in the order they
// were registered; if it rolls back, fn is dropped (the event is applied
// again and the handler registers anew). It is for work that must not
// happen unless the change is durable and is repaired by another path if
// lost: fn runs at most once, is lost if the process stops between the
// commit and fn, and cannot fail the event. A cache written through after
// a change, which the change's own events also update, is the example.
// With a Metadata the consumer did not make, fn never runs.
func (md Metadata) AfterCommit(fn func(ctx context.Context)) {
	if md.hooks != nil {
		md.hooks.after = append(md.hooks.after, fn)
	}
}

// ErrNoTransaction is returned by [Gather] for a Metadata the consumer
// did not make: there is no transaction to gather in.
var ErrNoTransaction = errors.New("consumer: Gather needs the Metadata of an event being applied")

// Gather lets the handlers of a batch write its changes together, in a
// few statements instead of a few per event. It returns the value kept
// under key by the transaction applying the event, made by newValue on
// the transaction's first call with that key; flush, given with that
// first call, runs once with the value after the transaction's last
// handler and before its commit, in the order the keys were first used.
// A handler adds its event's change to the value; flush writes them.
// flush may be nil when the value is written elsewhere, for example by an
// [Metadata.AfterCommit] hook that newValue registers (once per
// transaction, for all its events).
//
// flush is part of the transaction: its error fails it like a handler's
// (a failed batch is applied again one event per transaction, each with
// a flush of its own), and nothing of it stays if the transaction rolls
// back. The value must not outlive the transaction.
func Gather[T any](md Metadata, key any, newValue func() *T, flush func(ctx context.Context, tx pgx.Tx, v *T) error) (*T, error) {
	h := md.hooks
	if h == nil {
		return nil, ErrNoTransaction
	}
	if v, ok := h.gathered[key]; ok {
		return v.(*T), nil
	}
	v := newValue()
	if h.gathered == nil {
		h.gathered = map[any]any{}
	}
	h.gathered[key] = v
	if flush != nil {
		h.before = append(h.before, func(ctx context.Context, tx pgx.Tx) error { return flush(ctx, tx, v) })
	}
	return v, nil
}

// emitted is the Gather key of the events a transaction's handlers queued
// for one outbox writer.
type emitted struct{ w *outbox.Writer }

// Emit queues events for w to write in the transaction applying md's
// event. The events every handler of the batch emits are written
// together, in one round trip after the last handler and before the
// commit, in the order emitted (events written with [outbox.Writer.Write]
// or Queue meanwhile come before them all; two writers flush in the order
// each was first used); each keeps the trace of the handler that emitted
// it. A batch of several events thus writes its events in one round trip
// instead of one per event, which matters most while its handlers hold
// row locks other transactions want. Events a later handler of the batch
// must read back are written with [outbox.Writer.Write] instead. With a
// Metadata the consumer did not make, Emit returns [ErrNoTransaction].
func Emit(ctx context.Context, md Metadata, w *outbox.Writer, events ...outbox.Event) error {
	b, err := Gather(md, emitted{w}, func() *pgx.Batch { return &pgx.Batch{} }, func(ctx context.Context, tx pgx.Tx, b *pgx.Batch) error {
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("write the events the batch emitted: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return w.Queue(ctx, b, events...)
}

// txHooks collects the hooks of one transaction.
type txHooks struct {
	gathered map[any]any // Gather's values by key
	before   []func(context.Context, pgx.Tx) error
	after    []func(context.Context)
}

// flush runs the Gather flushes; the handlers are done, the transaction
// not yet committed.
func (h *txHooks) flush(ctx context.Context, tx pgx.Tx, log *slog.Logger) error {
	for _, fn := range h.before {
		if err := catch(log, "Gather flush", func() error { return fn(ctx, tx) }); err != nil {
			return err
		}
	}
	return nil
}

// run calls the AfterCommit hooks; the transaction has committed, so a
// hook that panics is only logged.
func (h *txHooks) run(ctx context.Context, log *slog.Logger) {
	for _, fn := range h.after {
		_ = catch(log, "AfterCommit hook", func() error { fn(ctx); return nil })
	}
}

// catch runs fn (a handler or one of its hooks) and turns a panic into a
// permanent error naming what panicked, with the stack logged. A panic is
// a bug that the same event triggers again: left alone, it would crash the
// process at every redelivery, on every member the partition moves to,
// where a permanent error dead-letters the event alone.
func catch(log *slog.Logger, what string, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			log.Error(what+" panicked", "panic", r, "stack", string(debug.Stack()))
			err = Permanent(fmt.Errorf("%s panicked: %v", what, r))
		}
	}()
	return fn()
}

// Handler applies one decoded event inside tx.
type Handler[T proto.Message] func(ctx context.Context, tx pgx.Tx, msg T, md Metadata) error

type handler struct {
	aggregate string // declared by the event type, if it does
	newMsg    func() proto.Message
	apply     func(ctx context.Context, tx pgx.Tx, msg proto.Message, md Metadata) error
}

// Consumer applies events from a transport to a database exactly once in
// effect.
type Consumer struct {
	cfg      Config
	handlers map[protoreflect.FullName]handler

	processed  atomic.Uint64
	duplicates atomic.Uint64
	retries    atomic.Uint64
	dead       atomic.Uint64
	skipped    atomic.Uint64
	held       atomic.Uint64

	claimsMu sync.Mutex
	claims   map[transport.Claim]bool

	unknownMu sync.Mutex
	unknown   map[string]bool // unknown types already logged
}

// Stats is a snapshot of a consumer's counters.
type Stats struct {
	// Processed counts events whose handler committed.
	Processed uint64
	// Duplicates counts redelivered events skipped thanks to the inbox.
	Duplicates uint64
	// Retries counts handler attempts after a failure.
	Retries uint64
	// DeadLettered counts messages sent to a dead-letter destination.
	DeadLettered uint64
	// Skipped counts events acknowledged without a handler.
	Skipped uint64
	// Held counts waits on commands of a type this build does not know.
	Held uint64
	// Partitions is how many partitions this member owns now.
	Partitions int
}

// PartitionLag is the lag of one owned partition.
type PartitionLag struct {
	Topic     string // the partition's topic
	Partition int32  // its number
	// Messages not yet received by this member; -1 when unknown.
	Messages int64
	// Buffered counts messages fetched and waiting for the partition's
	// worker (see transport.Claim.Buffered).
	Buffered int64
}

// ErrPermanent marks errors that retrying cannot fix; see [Permanent].
var ErrPermanent = errors.New("permanent failure")

// Permanent wraps err so that the message goes to the dead-letter
// destination without further attempts.
func Permanent(err error) error { return fmt.Errorf("%w: %w", ErrPermanent, err) }

// Transient wraps err, a failure of something the handler depends on
// (a cache, another server) rather than of the event, so that retrying it
// does not spend the event's attempts: the partition waits, with backoff,
// until the dependency is back, and the event is never dead-lettered for it.
func Transient(err error) error { return infraError{err} }

// New validates cfg and returns a consumer with no handlers yet.
func New(cfg Config) (*Consumer, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return &Consumer{cfg: cfg, handlers: map[protoreflect.FullName]handler{}, claims: map[transport.Claim]bool{}, unknown: map[string]bool{}}, nil
}

// Handle registers h for events of type T (matched on ce_type, the full
// protobuf message name). Register handlers before Run.
func Handle[T proto.Message](c *Consumer, h Handler[T]) {
	var zero T
	mt := zero.ProtoReflect().Type()
	c.handlers[mt.Descriptor().FullName()] = handler{
		aggregate: eventpb.Aggregate(mt.Descriptor()),
		newMsg:    func() proto.Message { return mt.New().Interface() },
		apply: func(ctx context.Context, tx pgx.Tx, msg proto.Message, md Metadata) error {
			return catch(c.cfg.Logger, "handler", func() error { return h(ctx, tx, msg.(T), md) })
		},
	}
}

// Topics returns the topics the consumer reads: [Config.Topics] and, with
// [Config.TopicPrefix], the topic of each aggregate its handlers' event types
// declare. It is complete once the handlers are registered.
func (c *Consumer) Topics() []string {
	topics := slices.Clone(c.cfg.Topics)
	if c.cfg.TopicPrefix != "" {
		for _, h := range c.handlers {
			if h.aggregate != "" {
				topics = append(topics, c.cfg.TopicPrefix+h.aggregate)
			}
		}
	}
	slices.Sort(topics)
	return slices.Compact(topics)
}

// Handles returns the full names of the event types handlers are
// registered for, sorted.
func (c *Consumer) Handles() []string {
	names := make([]string, 0, len(c.handlers))
	for name := range c.handlers {
		names = append(names, string(name))
	}
	slices.Sort(names)
	return names
}

// Group returns the consumer group.
func (c *Consumer) Group() string { return c.cfg.Group }

// Stats returns the consumer's counters.
func (c *Consumer) Stats() Stats {
	c.claimsMu.Lock()
	n := len(c.claims)
	c.claimsMu.Unlock()
	return Stats{
		Processed:    c.processed.Load(),
		Duplicates:   c.duplicates.Load(),
		Retries:      c.retries.Load(),
		DeadLettered: c.dead.Load(),
		Skipped:      c.skipped.Load(),
		Held:         c.held.Load(),
		Partitions:   n,
	}
}

// Lag returns the lag of each partition this member owns, sorted.
func (c *Consumer) Lag() []PartitionLag {
	c.claimsMu.Lock()
	claims := make([]transport.Claim, 0, len(c.claims))
	for cl := range c.claims {
		claims = append(claims, cl)
	}
	c.claimsMu.Unlock()
	out := make([]PartitionLag, len(claims))
	for i, cl := range claims {
		out[i] = PartitionLag{Topic: cl.Topic(), Partition: cl.Partition(), Messages: cl.Lag(), Buffered: cl.Buffered()}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Topic != out[j].Topic {
			return out[i].Topic < out[j].Topic
		}
		return out[i].Partition < out[j].Partition
	})
	return out
}

// Run consumes until ctx is cancelled, then leaves the group and returns
// nil. It creates the inbox table if it is missing. A database or broker
// that cannot be reached, at start or later, is waited for with backoff:
// Run does not give up while ctx lasts.
func (c *Consumer) Run(ctx context.Context) error {
	cfg := &c.cfg
	if len(c.Topics()) == 0 {
		return fmt.Errorf("consumer %s: no topics: its handled event types declare no aggregate and Config.Topics is empty", cfg.Group)
	}
	retry := backoff.New(cfg.Backoff, cfg.MaxBackoff)
	for {
		err := Migrate(ctx, cfg.Pool)
		if err == nil {
			break
		}
		cfg.Logger.Warn("inbox not ready; retrying", "error", err, "retry_in", retry.Next())
		if !retry.Wait(ctx) {
			return nil
		}
	}
	pruneDone := make(chan struct{})
	pctx, stopPrune := context.WithCancel(ctx)
	go func() { defer close(pruneDone); c.pruneLoop(pctx) }()
	defer func() { stopPrune(); <-pruneDone }()

	retry = backoff.New(cfg.Backoff, cfg.MaxBackoff)
	for {
		started := time.Now()
		err := c.subscribeOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > time.Minute {
			retry.Reset()
		}
		cfg.Logger.Warn("subscription ended; joining again", "error", err, "retry_in", retry.Next())
		if !retry.Wait(ctx) {
			return nil
		}
	}
}

func (c *Consumer) subscribeOnce(ctx context.Context) error {
	sub, err := c.cfg.Transport.NewSubscriber(transport.SubscriberConfig{
		Group:         c.cfg.Group,
		Topics:        c.Topics(),
		RevokeTimeout: c.cfg.RevokeTimeout,
		// A batch is one transaction; a partition taken away finishes its
		// current batch before it goes.
		MaxBatch: c.cfg.MaxBatch,
		Logger:   c.cfg.Logger,
	})
	if err != nil {
		return err
	}
	return sub.Run(ctx, c.consumeClaim)
}

// consumeClaim applies one owned partition's messages in order until the
// partition is taken away or its context ends.
func (c *Consumer) consumeClaim(cl transport.Claim) {
	c.claimsMu.Lock()
	c.claims[cl] = true
	c.claimsMu.Unlock()
	defer func() {
		c.claimsMu.Lock()
		delete(c.claims, cl)
		c.claimsMu.Unlock()
	}()
	ctx := cl.Context()
	for {
		var batch []*transport.Message
		select {
		case b, ok := <-cl.Messages():
			if !ok {
				return
			}
			batch = b
		case <-ctx.Done():
			return
		}
		if !c.applyBatch(ctx, cl, batch) {
			// Stopping mid-batch: what is not committed goes to the
			// partition's next owner.
			return
		}
	}
}
