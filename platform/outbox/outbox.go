// Package outbox writes events into a Debezium-compatible transactional
// outbox table inside the caller's transaction, so an event is published if
// and only if the business change that caused it commits.
//
//	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
//		if _, err := tx.Exec(ctx, "UPDATE orders SET status = 'CONFIRMED' WHERE id = $1", id); err != nil {
//			return err
//		}
//		return w.Write(ctx, tx, outbox.Event{AggregateType: "order", AggregateID: id, Message: ev})
//	})
//
// In [ModeCDC] the writer deletes each row in the same transaction: the table
// stays empty and only the write-ahead log carries the event to the relay.
// In [ModePoll] rows stay until the relay has published them.
//
// An event must fit what the transport accepts: [Writer.Write] refuses one
// larger than [DefaultMaxEventBytes] (or the limit set with
// [WithMaxEventBytes]) with [ErrEventTooLarge], before anything is written,
// because a relay cannot skip an event the broker refuses: it would stop
// there, holding back every later event of its database.
package outbox

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/platform/eventpb"
	"github.com/switchyard/switchyard/platform/grpcerr"
	"github.com/switchyard/switchyard/platform/migrate"
)

// Mode is how events leave the outbox table.
type Mode string

const (
	// ModeCDC reads events from the write-ahead log (logical replication).
	// It is the default.
	ModeCDC Mode = "cdc"
	// ModePoll reads and deletes rows with SELECT ... FOR UPDATE SKIP LOCKED,
	// for databases without logical replication.
	ModePoll Mode = "poll"
)

// ParseMode parses "cdc" or "poll"; the empty string means [ModeCDC].
func ParseMode(s string) (Mode, error) {
	switch Mode(strings.ToLower(strings.TrimSpace(s))) {
	case "", ModeCDC:
		return ModeCDC, nil
	case ModePoll:
		return ModePoll, nil
	}
	return "", fmt.Errorf("unknown outbox mode %q (want %q or %q)", s, ModeCDC, ModePoll)
}

// Table is the outbox table's name.
const Table = "outbox"

// Schema creates the outbox table. The columns are Debezium's outbox event
// router columns; seq (an identity column Debezium ignores) is the poll
// relay's order. It is assigned at insert, so it is commit order only among
// transactions that serialize (per aggregate: writers that lock the
// aggregate's row before writing its event).
const Schema = `
CREATE TABLE IF NOT EXISTS outbox (
	id                 uuid PRIMARY KEY,
	aggregatetype      text NOT NULL,
	aggregateid        text NOT NULL,
	type               text NOT NULL,
	payload            bytea NOT NULL,
	tracingspancontext text,
	created_at         timestamptz NOT NULL DEFAULT now(),
	seq                bigint GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX IF NOT EXISTS outbox_seq_idx ON outbox (seq);
`

// Migrate creates the outbox table if it does not exist.
func Migrate(ctx context.Context, db migrate.Querier) error {
	return migrate.EnsureTable(ctx, db, Table, Schema)
}

// Event is one event to write.
type Event struct {
	// AggregateType names the kind of entity ("order"); the relay routes
	// the event to the topic <prefix><AggregateType>. Letters, digits,
	// '.', '_' and '-' only. Leave it empty when the message declares its
	// aggregate (option (switchyard.event.v1.aggregate), see package
	// eventpb): the declared one is used, and one given here must match it.
	AggregateType string
	// AggregateID identifies the entity; it becomes the Kafka key, so all
	// events of one aggregate keep their order.
	AggregateID string
	// Message is the event; its full protobuf name becomes the event type.
	Message proto.Message
	// ID is the event id (CloudEvents ce_id, the consumers' dedup key);
	// a random UUID when zero.
	ID uuid.UUID
}

// Record is one outbox row as the relay reads it.
type Record struct {
	ID                 uuid.UUID // id: the event id
	AggregateType      string    // aggregatetype: routes to the topic
	AggregateID        string    // aggregateid: the Kafka key
	Type               string    // type: the full protobuf message name
	Payload            []byte    // payload: the protobuf bytes
	TracingSpanContext string    // tracingspancontext: the writer's W3C trace context
	CreatedAt          time.Time // created_at: the writing transaction's start
}

var aggregateTypeRE = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,200}$`)

// ErrInvalidEvent is returned (wrapped) for an event that cannot be written.
var ErrInvalidEvent = errors.New("invalid outbox event")

// ErrNoRelay is returned (wrapped) by a writer made with [NoRelay]: the
// service said it emits no events, so nothing would publish them.
var ErrNoRelay = errors.New("this service has no outbox relay")

// ErrEventTooLarge is returned (wrapped, with the event's size and the limit)
// by [Writer.Write] for an event bigger than the writer's limit
// ([DefaultMaxEventBytes] unless [WithMaxEventBytes] says otherwise). Nothing
// of that Write reaches the database, and the caller's transaction must not
// commit: a service answers such a request with this error, which answers
// INVALID_ARGUMENT (the request makes an event too big to carry).
var ErrEventTooLarge error = grpcerr.New(codes.InvalidArgument, "outbox event too large for the transport")

// DefaultMaxEventBytes is the default limit on an event's size as the
// transport carries it: payload, key and headers (see [EventSize]). It is
// below what Kafka accepts out of the box (the producer's message.max.bytes,
// 1,000,000 bytes, and the broker's, 1 MiB), so that an event the writer
// accepts can always be published: one the broker refused would stop its
// database's relay, since nothing after it may overtake it.
const DefaultMaxEventBytes = 900_000

// envelopeOverhead bounds what the envelope adds to an event besides its
// payload, key, type and trace context: the fixed CloudEvents headers (names
// and values: ce_specversion, ce_id, ce_source up to a few hundred bytes,
// ce_time, content-type) and Kafka's record framing.
const envelopeOverhead = 1024

// EventSize is the size the writer counts against its limit for an event
// with this payload, aggregate id, type and trace context: the payload, the
// key and the ce_subject header (both the aggregate id), ce_type, traceparent
// and tracestate, plus a fixed allowance for the other headers and framing.
func EventSize(payload int, aggregateID, typ, traceContext string) int {
	return payload + 2*len(aggregateID) + len(typ) + len(traceContext) + envelopeOverhead
}

// Writer writes events into the outbox table.
type Writer struct {
	mode     Mode
	maxBytes int
	refuse   error // set by NoRelay
}

// WriterOption configures a [Writer].
type WriterOption func(*Writer)

// WithMaxEventBytes sets the largest event (by [EventSize]) the writer
// accepts; n <= 0 means [DefaultMaxEventBytes]. Raise it only together with
// the transport's limits (Kafka: the producer's and the broker's
// message.max.bytes and the topics' max.message.bytes): an event the broker
// refuses stops the relay.
func WithMaxEventBytes(n int) WriterOption {
	return func(w *Writer) {
		if n > 0 {
			w.maxBytes = n
		}
	}
}

// NewWriter returns a writer for the relay mode in use: in [ModeCDC] rows are
// deleted in the same transaction.
func NewWriter(mode Mode, opts ...WriterOption) *Writer {
	if mode == "" {
		mode = ModeCDC
	}
	w := &Writer{mode: mode, maxBytes: DefaultMaxEventBytes}
	for _, o := range opts {
		o(w)
	}
	return w
}

// NoRelay returns a writer that writes nothing and fails every non-empty
// Write with [ErrNoRelay], naming service: the writer of a service that
// declared it emits no events, so that an event written by mistake fails
// its transaction instead of waiting in a table no relay reads.
func NoRelay(service string) *Writer {
	return &Writer{refuse: fmt.Errorf("%w: %s declares no events (service.Spec.Emits)", ErrNoRelay, service)}
}

// MaxEventBytes returns the largest event size the writer accepts.
func (w *Writer) MaxEventBytes() int { return w.maxBytes }

// Write adds events to the outbox inside tx, stamping each with the span
// context found in ctx. Nothing is published unless tx commits. An invalid
// event ([ErrInvalidEvent]) or one larger than the writer's limit
// ([ErrEventTooLarge]) fails the whole call before anything is written.
func (w *Writer) Write(ctx context.Context, tx pgx.Tx, events ...Event) error {
	if len(events) == 0 {
		return nil
	}
	batch := &pgx.Batch{}
	if err := w.Queue(ctx, batch, events...); err != nil {
		return err
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("outbox: write %d event(s): %w", len(events), err)
	}
	return nil
}

// Queue adds the statements that write events to batch, for a caller that
// sends them in one round trip with its own statements (in a transaction:
// the events must commit with the change). It validates like
// [Writer.Write] and queues nothing if any event is refused.
func (w *Writer) Queue(ctx context.Context, batch *pgx.Batch, events ...Event) error {
	if len(events) == 0 {
		return nil
	}
	if w.refuse != nil {
		return w.refuse
	}
	spanContext := EncodeTraceContext(ctx)
	queued := &pgx.Batch{}
	for _, ev := range events {
		if err := resolve(&ev); err != nil {
			return err
		}
		payload, err := proto.Marshal(ev.Message)
		if err != nil {
			return fmt.Errorf("outbox: marshal %s: %w", proto.MessageName(ev.Message), err)
		}
		typ := string(proto.MessageName(ev.Message))
		if size := EventSize(len(payload), ev.AggregateID, typ, spanContext); size > w.maxBytes {
			return fmt.Errorf("outbox: %w: %s for %s %q is %d bytes with its envelope (payload %d), more than the limit of %d",
				ErrEventTooLarge, typ, ev.AggregateType, ev.AggregateID, size, len(payload), w.maxBytes)
		}
		id := ev.ID
		if id == uuid.Nil {
			id = uuid.New()
		}
		var tsc *string
		if spanContext != "" {
			tsc = &spanContext
		}
		queued.Queue(`INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, tracingspancontext)
			VALUES ($1, $2, $3, $4, $5, $6)`,
			id, ev.AggregateType, ev.AggregateID, typ, payload, tsc)
		if w.mode == ModeCDC {
			queued.Queue(`DELETE FROM outbox WHERE id = $1`, id)
		}
	}
	batch.QueuedQueries = append(batch.QueuedQueries, queued.QueuedQueries...)
	return nil
}

// resolve fills in the aggregate type the message declares and validates
// the event.
func resolve(ev *Event) error {
	if ev.Message == nil {
		return fmt.Errorf("%w: nil message", ErrInvalidEvent)
	}
	declared := eventpb.Aggregate(ev.Message.ProtoReflect().Descriptor())
	switch {
	case declared == "":
	case ev.AggregateType == "":
		ev.AggregateType = declared
	case ev.AggregateType != declared:
		return fmt.Errorf("%w: %s declares aggregate %q, not %q", ErrInvalidEvent, proto.MessageName(ev.Message), declared, ev.AggregateType)
	}
	switch {
	case !aggregateTypeRE.MatchString(ev.AggregateType):
		return fmt.Errorf("%w: aggregate type %q must be 1-200 of [a-zA-Z0-9._-]", ErrInvalidEvent, ev.AggregateType)
	case ev.AggregateID == "":
		return fmt.Errorf("%w: empty aggregate id", ErrInvalidEvent)
	}
	return nil
}

var traceContext = propagation.TraceContext{}

// EncodeTraceContext serialises the W3C trace context of ctx the way the
// tracingspancontext column holds it ("traceparent=...\ntracestate=...",
// the properties format Debezium uses). It is empty when ctx has no span.
func EncodeTraceContext(ctx context.Context) string {
	carrier := propagation.MapCarrier{}
	traceContext.Inject(ctx, carrier)
	if carrier["traceparent"] == "" {
		return ""
	}
	var b strings.Builder
	for _, k := range []string{"traceparent", "tracestate"} {
		if v := carrier[k]; v != "" {
			fmt.Fprintf(&b, "%s=%s\n", k, v)
		}
	}
	return b.String()
}

// TraceCarrier parses a tracingspancontext value into its header values
// (traceparent, tracestate), ready for a propagator.
func TraceCarrier(s string) propagation.MapCarrier {
	carrier := propagation.MapCarrier{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			carrier[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return carrier
}
