// Package consumer applies Kafka events to a PostgreSQL database exactly once
// in effect.
//
// Each assigned partition is applied in order by its own goroutine. Each
// event is handled in one database transaction that also records
// (consumer group, event id) in the inbox table; a redelivered event finds its
// inbox row and is skipped. The handler may change the service's tables and
// write outbox events in the same transaction. Offsets are stored only after
// that transaction commits. Handler errors are retried with exponential
// backoff; after [Config.MaxAttempts] (or at once for errors wrapped with
// [Permanent], and for messages that cannot be decoded) the message goes to
// <topic>.dlq with the error in its headers and the partition moves on.
//
//	c, _ := consumer.New(consumer.Config{Kafka: k, Group: "payments", Topics: []string{"switchyard.order"}, Pool: pool})
//	consumer.Handle(c, func(ctx context.Context, tx pgx.Tx, ev *ordersv1.ChargePayment, md consumer.Metadata) error {
//		... // change tables through tx, write outbox events through tx
//	})
//	err := c.Run(ctx)
package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
)

const tracerName = "github.com/switchyard/switchyard/platform/consumer"

// InboxSchema creates the inbox table.
const InboxSchema = `
CREATE TABLE IF NOT EXISTS inbox (
	consumer_group text NOT NULL,
	event_id       uuid NOT NULL,
	event_type     text NOT NULL,
	processed_at   timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (consumer_group, event_id)
);
CREATE INDEX IF NOT EXISTS inbox_processed_at_idx ON inbox (processed_at);
`

// Migrate creates the inbox table if it does not exist.
func Migrate(ctx context.Context, db outbox.Querier) error {
	return outbox.EnsureTable(ctx, db, "inbox", InboxSchema)
}

// DLQ header names, added to the original headers of a dead-lettered message.
const (
	HeaderDLQError     = "dlq_error"
	HeaderDLQTopic     = "dlq_original_topic"
	HeaderDLQPartition = "dlq_original_partition"
	HeaderDLQOffset    = "dlq_original_offset"
	HeaderDLQGroup     = "dlq_consumer_group"
	HeaderDLQAttempts  = "dlq_attempts"
)

// Config configures a consumer. Kafka.Brokers, Group, Topics and Pool are
// required.
type Config struct {
	// Kafka says where to consume and how to create missing topics.
	Kafka broker.Config
	// Group is the consumer group; it also scopes the inbox.
	Group string
	// Topics to subscribe to.
	Topics []string
	// Pool is the database the handlers change.
	Pool *pgxpool.Pool
	// MaxAttempts is how often a failing message is tried before it goes to
	// the dead-letter topic (default 5).
	MaxAttempts int
	// Backoff is the pause after the first failure, doubled after each
	// further one up to MaxBackoff (defaults 100ms and 5s).
	Backoff    time.Duration
	MaxBackoff time.Duration // upper bound of the doubling Backoff
	// InboxRetention is how long inbox rows are kept (default 7 days). A
	// redelivery older than this is no longer recognised as a duplicate.
	InboxRetention time.Duration
	// PruneInterval is how often old inbox rows are deleted (default 1h).
	PruneInterval time.Duration
	// RevokeTimeout is how long, on a rebalance, a revoked partition's
	// current message may take to finish before it is cancelled and left to
	// the partition's next owner (default 10s): a handler stuck retrying
	// through a database outage must not stall the whole group.
	RevokeTimeout time.Duration
	// Logger receives the consumer's logs (default slog.Default()).
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	switch {
	case c.Kafka.Brokers == "":
		return errors.New("consumer: Kafka.Brokers is required")
	case c.Group == "":
		return errors.New("consumer: Group is required")
	case len(c.Topics) == 0:
		return errors.New("consumer: Topics is required")
	case c.Pool == nil:
		return errors.New("consumer: Pool is required")
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.Backoff <= 0 {
		c.Backoff = 100 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Second
	}
	if c.InboxRetention <= 0 {
		c.InboxRetention = 7 * 24 * time.Hour
	}
	if c.PruneInterval <= 0 {
		c.PruneInterval = time.Hour
	}
	if c.RevokeTimeout <= 0 {
		c.RevokeTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("component", "consumer", "group", c.Group)
	return nil
}

// Metadata describes the event being handled.
type Metadata struct {
	envelope.Metadata
	Topic     string // where the message was read
	Partition int32  // its partition
	Offset    int64  // its offset
	// Key is the Kafka key (the aggregate id).
	Key string
	// Attempt is 1 on the first try.
	Attempt int
}

// Handler applies one decoded event inside tx.
type Handler[T proto.Message] func(ctx context.Context, tx pgx.Tx, msg T, md Metadata) error

type handler struct {
	newMsg func() proto.Message
	apply  func(ctx context.Context, tx pgx.Tx, msg proto.Message, md Metadata) error
}

// Consumer applies events from Kafka to a database exactly once in effect.
type Consumer struct {
	cfg       Config
	handlers  map[protoreflect.FullName]handler
	dlqMu     sync.Mutex // guards dlqTopics: partition workers share it
	dlqTopics map[string]bool

	processed  atomic.Uint64
	duplicates atomic.Uint64
	retries    atomic.Uint64
	dead       atomic.Uint64
	skipped    atomic.Uint64
}

// Stats is a snapshot of a consumer's counters.
type Stats struct {
	// Processed counts events whose handler committed.
	Processed uint64
	// Duplicates counts redelivered events skipped thanks to the inbox.
	Duplicates uint64
	// Retries counts handler attempts after a failure.
	Retries uint64
	// DeadLettered counts messages sent to a dead-letter topic.
	DeadLettered uint64
	// Skipped counts events of a type no handler is registered for.
	Skipped uint64
}

// ErrPermanent marks errors that retrying cannot fix; see [Permanent].
var ErrPermanent = errors.New("permanent failure")

// Permanent wraps err so that the message goes to the dead-letter topic
// without further attempts.
func Permanent(err error) error { return fmt.Errorf("%w: %w", ErrPermanent, err) }

// New validates cfg and returns a consumer with no handlers yet.
func New(cfg Config) (*Consumer, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return &Consumer{cfg: cfg, handlers: map[protoreflect.FullName]handler{}, dlqTopics: map[string]bool{}}, nil
}

// Handle registers h for events of type T (matched on ce_type, the full
// protobuf message name). Register handlers before Run.
func Handle[T proto.Message](c *Consumer, h Handler[T]) {
	var zero T
	mt := zero.ProtoReflect().Type()
	c.handlers[mt.Descriptor().FullName()] = handler{
		newMsg: func() proto.Message { return mt.New().Interface() },
		apply: func(ctx context.Context, tx pgx.Tx, msg proto.Message, md Metadata) error {
			return h(ctx, tx, msg.(T), md)
		},
	}
}

// Stats returns the consumer's counters.
func (c *Consumer) Stats() Stats {
	return Stats{
		Processed:    c.processed.Load(),
		Duplicates:   c.duplicates.Load(),
		Retries:      c.retries.Load(),
		DeadLettered: c.dead.Load(),
		Skipped:      c.skipped.Load(),
	}
}

// Run consumes until ctx is cancelled, then commits the stored offsets,
// leaves the group and returns nil. It creates the inbox table and the
// subscribed topics if they are missing.
func (c *Consumer) Run(ctx context.Context) error {
	cfg := &c.cfg
	if err := Migrate(ctx, cfg.Pool); err != nil {
		return err
	}
	if err := broker.EnsureTopics(ctx, cfg.Kafka, cfg.Topics...); err != nil {
		return err
	}
	kc, err := broker.NewConsumer(cfg.Kafka, cfg.Group, "switchyard-consumer-"+cfg.Group, cfg.Logger)
	if err != nil {
		return err
	}
	defer kc.Close()
	dlq, err := broker.NewProducer(cfg.Kafka, "switchyard-dlq-"+cfg.Group, cfg.Logger)
	if err != nil {
		return err
	}
	defer dlq.Close()
	ws := &workers{c: c, kc: kc, dlq: dlq, ctx: ctx, byPartition: map[string]*worker{}}
	// On a rebalance, workers of revoked partitions finish their current
	// message before the partitions go (and their offsets are committed).
	rebalance := func(_ *kafka.Consumer, ev kafka.Event) error {
		if r, ok := ev.(kafka.RevokedPartitions); ok {
			ws.stop(r.Partitions)
		}
		return nil
	}
	if err := kc.SubscribeTopics(cfg.Topics, rebalance); err != nil {
		return fmt.Errorf("subscribe to %v: %w", cfg.Topics, err)
	}
	pruneDone := make(chan struct{})
	pctx, stopPrune := context.WithCancel(ctx)
	go func() { defer close(pruneDone); c.pruneLoop(pctx) }()
	defer func() { stopPrune(); <-pruneDone }()
	defer ws.stop(nil)

	for ctx.Err() == nil {
		ev := kc.Poll(100)
		switch e := ev.(type) {
		case *kafka.Message:
			if e.TopicPartition.Error != nil {
				cfg.Logger.Warn("consume", "error", e.TopicPartition.Error)
				continue
			}
			ws.dispatch(e)
		case kafka.Error:
			if e.IsFatal() {
				return fmt.Errorf("kafka consumer: %w", e)
			}
			cfg.Logger.Warn("kafka consumer", "error", e)
		}
	}
	return nil
}

// workers applies each assigned partition's messages in order, on its own
// goroutine, so that partitions do not wait for each other's commits.
type workers struct {
	c           *Consumer
	kc          *kafka.Consumer
	dlq         *kafka.Producer
	ctx         context.Context
	byPartition map[string]*worker // only touched by the polling goroutine
}

type worker struct {
	queue  chan *kafka.Message
	quit   chan struct{}
	done   chan struct{}
	ctx    context.Context // cancelled if the current message outlives the revocation grace period
	cancel context.CancelFunc
}

func partitionKey(tp kafka.TopicPartition) string {
	return *tp.Topic + "/" + strconv.Itoa(int(tp.Partition))
}

func (ws *workers) dispatch(msg *kafka.Message) {
	key := partitionKey(msg.TopicPartition)
	w := ws.byPartition[key]
	if w == nil {
		w = &worker{queue: make(chan *kafka.Message, 500), quit: make(chan struct{}), done: make(chan struct{})}
		w.ctx, w.cancel = context.WithCancel(ws.ctx)
		ws.byPartition[key] = w
		go ws.run(w)
	}
	select {
	case w.queue <- msg:
	case <-ws.ctx.Done():
	}
}

func (ws *workers) run(w *worker) {
	defer close(w.done)
	for {
		select {
		case <-w.quit:
			return
		case <-w.ctx.Done():
			return
		case msg := <-w.queue:
			if !ws.c.process(w.ctx, msg, ws.dlq) {
				// Stopping mid-message: its offset is not stored, so the
				// group's next owner of the partition handles it again.
				return
			}
			if _, err := ws.kc.StoreMessage(msg); err != nil {
				// The partition was revoked meanwhile; its new owner
				// redelivers the message and the inbox absorbs it.
				ws.c.cfg.Logger.Debug("store offset", "error", err)
			}
		}
	}
}

// stop ends the workers of the given partitions (all when nil) after their
// current message; queued messages are dropped, since their offsets were
// not stored they are delivered again.
func (ws *workers) stop(parts []kafka.TopicPartition) {
	keys := make([]string, 0, len(ws.byPartition))
	if parts == nil {
		for k := range ws.byPartition {
			keys = append(keys, k)
		}
	} else {
		for _, tp := range parts {
			keys = append(keys, partitionKey(tp))
		}
	}
	for _, k := range keys {
		if w := ws.byPartition[k]; w != nil {
			close(w.quit)
			select {
			case <-w.done:
			case <-time.After(ws.c.cfg.RevokeTimeout):
				w.cancel()
				<-w.done
			}
			w.cancel()
			delete(ws.byPartition, k)
		}
	}
}

// process handles one message until it is applied, recognised as a
// duplicate, skipped or dead-lettered. It returns false if ctx ended first.
func (c *Consumer) process(ctx context.Context, msg *kafka.Message, dlq *kafka.Producer) bool {
	tp := msg.TopicPartition
	md := Metadata{Topic: *tp.Topic, Partition: tp.Partition, Offset: int64(tp.Offset), Key: string(msg.Key)}
	log := c.cfg.Logger.With("topic", md.Topic, "partition", md.Partition, "offset", md.Offset)

	var err error
	md.Metadata, err = envelope.Decode(msg)
	if err != nil {
		return c.deadLetter(ctx, msg, dlq, Permanent(err), 1, log)
	}
	log = log.With("event_id", md.ID, "event_type", md.Type)
	h, ok := c.handlers[protoreflect.FullName(md.Type)]
	if !ok {
		c.skipped.Add(1)
		log.Debug("no handler for event type; skipped")
		return true
	}
	event := h.newMsg()
	if err := proto.Unmarshal(msg.Value, event); err != nil {
		return c.deadLetter(ctx, msg, dlq, Permanent(fmt.Errorf("decode %s: %w", md.Type, err)), 1, log)
	}

	parent := propagation.TraceContext{}.Extract(ctx, envelope.TraceCarrier(msg))
	backoff := c.cfg.Backoff
	for attempt := 1; ; attempt++ {
		md.Attempt = attempt
		dup, err := c.apply(parent, h, event, md)
		if err == nil {
			if dup {
				c.duplicates.Add(1)
				log.Debug("duplicate event skipped")
			} else {
				c.processed.Add(1)
			}
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		if isInfrastructure(err) {
			// The database, not the message, is at fault: wait for it
			// without spending the message's attempts.
			attempt--
		} else if errors.Is(err, ErrPermanent) || attempt >= c.cfg.MaxAttempts {
			return c.deadLetter(ctx, msg, dlq, err, attempt, log)
		}
		log.Warn("handler failed; retrying", "attempt", attempt, "error", err, "retry_in", backoff)
		c.retries.Add(1)
		if !sleep(ctx, backoff) {
			return false
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

// apply runs the handler and the inbox insert in one transaction. It reports
// dup=true when the inbox already held the event.
func (c *Consumer) apply(parent context.Context, h handler, event proto.Message, md Metadata) (dup bool, err error) {
	ctx, span := otel.Tracer(tracerName).Start(parent, "process "+md.Topic,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "kafka"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.operation.name", "process"),
			attribute.String("messaging.destination.name", md.Topic),
			attribute.String("messaging.consumer.group.name", c.cfg.Group),
			attribute.String("messaging.message.id", md.ID.String()),
			attribute.String("messaging.destination.partition.id", strconv.Itoa(int(md.Partition))),
			attribute.Int64("messaging.kafka.offset", md.Offset),
			attribute.String("messaging.kafka.message.key", md.Key),
			attribute.String("cloudevents.event_type", md.Type),
			attribute.Int("switchyard.attempt", md.Attempt),
		))
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
	tag, err := tx.Exec(ctx, `INSERT INTO inbox (consumer_group, event_id, event_type) VALUES ($1, $2, $3)
		ON CONFLICT DO NOTHING`, c.cfg.Group, md.ID, md.Type)
	if err != nil {
		return false, infraError{fmt.Errorf("record in inbox: %w", err)}
	}
	if tag.RowsAffected() == 0 {
		return true, nil
	}
	if err := h.apply(ctx, tx, event, md); err != nil {
		return false, fmt.Errorf("handle %s %s: %w", md.Type, md.ID, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, infraError{fmt.Errorf("commit: %w", err)}
	}
	return false, nil
}

// infraError is a failure of the database rather than of the handler.
type infraError struct{ error }

func (e infraError) Unwrap() error { return e.error }

// isInfrastructure reports whether err means the database could not be
// reached or the connection broke, as opposed to the handler rejecting the
// event.
func isInfrastructure(err error) bool {
	var ie infraError
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ie) || errors.As(err, &ce) || errors.As(err, &ne) || pgconn.Timeout(err)
}

// deadLetter sends msg to <topic>.dlq with the failure in its headers,
// retrying until Kafka acknowledges it or ctx ends.
func (c *Consumer) deadLetter(ctx context.Context, msg *kafka.Message, dlq *kafka.Producer, cause error, attempts int, log *slog.Logger) bool {
	topic := envelope.DLQTopic(*msg.TopicPartition.Topic)
	out := &kafka.Message{
		TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: kafka.PartitionAny},
		Key:            msg.Key,
		Value:          msg.Value,
		Headers: append(append([]kafka.Header(nil), msg.Headers...),
			kafka.Header{Key: HeaderDLQError, Value: []byte(cause.Error())},
			kafka.Header{Key: HeaderDLQTopic, Value: []byte(*msg.TopicPartition.Topic)},
			kafka.Header{Key: HeaderDLQPartition, Value: []byte(strconv.Itoa(int(msg.TopicPartition.Partition)))},
			kafka.Header{Key: HeaderDLQOffset, Value: []byte(strconv.FormatInt(int64(msg.TopicPartition.Offset), 10))},
			kafka.Header{Key: HeaderDLQGroup, Value: []byte(c.cfg.Group)},
			kafka.Header{Key: HeaderDLQAttempts, Value: []byte(strconv.Itoa(attempts))},
		),
	}
	backoff := c.cfg.Backoff
	for {
		err := c.sendDLQ(ctx, dlq, topic, out)
		if err == nil {
			c.dead.Add(1)
			log.Error("message sent to dead-letter topic", "dlq", topic, "attempts", attempts, "error", cause)
			return true
		}
		log.Warn("dead-letter send failed; retrying", "dlq", topic, "error", err)
		if !sleep(ctx, backoff) {
			return false
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

func (c *Consumer) sendDLQ(ctx context.Context, dlq *kafka.Producer, topic string, msg *kafka.Message) error {
	c.dlqMu.Lock()
	known := c.dlqTopics[topic]
	c.dlqMu.Unlock()
	if !known {
		if err := broker.EnsureTopics(ctx, c.cfg.Kafka, topic); err != nil {
			return err
		}
		c.dlqMu.Lock()
		c.dlqTopics[topic] = true
		c.dlqMu.Unlock()
	}
	report := make(chan kafka.Event, 1)
	if err := dlq.Produce(msg, report); err != nil {
		return err
	}
	select {
	case ev := <-report:
		if m, ok := ev.(*kafka.Message); ok && m.TopicPartition.Error != nil {
			return m.TopicPartition.Error
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Consumer) pruneLoop(ctx context.Context) {
	for {
		if n, err := c.Prune(ctx); err != nil && ctx.Err() == nil {
			c.cfg.Logger.Warn("prune inbox", "error", err)
		} else if n > 0 {
			c.cfg.Logger.Info("pruned inbox", "rows", n)
		}
		if !sleep(ctx, c.cfg.PruneInterval) {
			return
		}
	}
}

// Prune deletes this group's inbox rows older than InboxRetention and
// returns how many it deleted. Run calls it every PruneInterval.
func (c *Consumer) Prune(ctx context.Context) (int64, error) {
	tag, err := c.cfg.Pool.Exec(ctx, `DELETE FROM inbox WHERE consumer_group = $1 AND processed_at < now() - make_interval(secs => $2)`,
		c.cfg.Group, c.cfg.InboxRetention.Seconds())
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
