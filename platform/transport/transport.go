// Package transport is the boundary between Switchyard's relay and consumer
// and the message broker that carries events between services.
//
// Two implementations sit behind it: Kafka (package broker, the default) and
// Redis Streams (package redisstream). Both give the same guarantees, which
// the relay and the consumer rely on and the shared conformance tests check:
//
//   - A topic is split into partitions by the key's hash (Kafka's murmur2
//     partitioner, so both transports place a key in the same partition); the
//     messages of one key keep their order.
//   - A [Publisher] acknowledges a message only once the broker holds it
//     durably, and acknowledges the messages of one key in order.
//   - Within a consumer group, exactly one member owns a partition at a time
//     and receives its messages in order as a [Claim]. A message stays
//     unprocessed until the claim's Commit; the partition's next owner gets it
//     again otherwise.
//   - A claim's Epoch grows with every change of owner, so a former owner
//     that was paused past the end of its ownership can be fenced off where
//     it writes (the consumer checks it in the same database transaction).
package transport

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
)

// Header is one message header (a CloudEvents attribute, trace context...).
type Header struct {
	Key   string // the header's name
	Value []byte // its value
}

// Message is one event as a transport carries it.
type Message struct {
	// Topic is the logical topic (for example "switchyard.order").
	Topic string
	// Key decides the partition: messages with one key keep their order.
	Key []byte
	// Value is the payload.
	Value []byte
	// Headers describe the payload.
	Headers []Header

	// Partition the message was read from (received messages only).
	Partition int32
	// Offset is the message's position in its partition for transports
	// with numeric offsets (Kafka); -1 otherwise.
	Offset int64
	// Position is the message's position in the transport's own notation
	// (a Kafka offset in decimal, a Redis stream entry id).
	Position string
	// Deliveries is how often the transport has handed this message to a
	// consumer of the group, when it knows (Redis); 0 when it does not.
	Deliveries int64
}

// Header returns the value of the last header named key, or "".
func (m *Message) Header(key string) string {
	for i := len(m.Headers) - 1; i >= 0; i-- {
		if m.Headers[i].Key == key {
			return string(m.Headers[i].Value)
		}
	}
	return ""
}

// Delivery says where an acknowledged message was stored.
type Delivery struct {
	Partition int32  // the partition the message went to
	Position  string // its position there (offset or entry id)
}

// Publisher sends messages and reports each one's acknowledgement. It is
// safe for use by one goroutine at a time.
type Publisher interface {
	// Publish queues m. ack runs (on another goroutine) once the broker has
	// durably acknowledged m; acknowledgements of one key come in order.
	// Publish blocks while the queue is full; an error means m was not
	// queued. Missing topics are created on first use.
	Publish(ctx context.Context, m *Message, ack func(Delivery)) error
	// Failed delivers the first fatal error. After it nothing further is
	// acknowledged: the caller must stop and resend from its last
	// acknowledged message with a new Publisher.
	Failed() <-chan error
	// Flush waits up to timeout for every queued message to be acknowledged
	// and reports whether all were.
	Flush(timeout time.Duration) bool
	// Close drops what is still queued (it was not acknowledged) and
	// releases the publisher.
	Close()
}

// SubscriberConfig configures a consumer group member.
type SubscriberConfig struct {
	// Group is the consumer group.
	Group string
	// Topics to consume.
	Topics []string
	// RevokeTimeout bounds how long a partition that is taken away may take
	// to finish its current work, in total for all partitions taken away
	// at once; after it, each such claim's context is cancelled.
	RevokeTimeout time.Duration
	// MaxBatch bounds the messages of one batch on a claim's Messages
	// channel (default 500).
	MaxBatch int
	// Logger receives the subscriber's logs.
	Logger *slog.Logger
}

// Subscriber is one member of a consumer group.
type Subscriber interface {
	// Run joins the group and consumes until ctx ends or a fatal error.
	// For each partition the member comes to own, it calls consume in a
	// new goroutine with the partition's claim; consume must return soon
	// after the claim's Messages channel is closed (the partition is taken
	// away) and at once when the claim's context ends. Run returns after
	// every consume call has returned.
	Run(ctx context.Context, consume func(Claim)) error
}

// Claim is one partition owned by one member of a group.
type Claim interface {
	// Topic and Partition name the partition.
	Topic() string
	Partition() int32
	// Epoch grows with every change of the partition's owner; 0 when the
	// transport cannot tell (then it does not fence).
	Epoch() int64
	// Messages delivers the partition's messages in order, starting with
	// those a former owner did not commit, in batches of what has arrived
	// (at least one message, at most SubscriberConfig.MaxBatch). It is
	// closed when the partition is taken away or the subscriber stops; a
	// batch not yet received then is dropped (it was not committed, so the
	// next owner gets it again).
	Messages() <-chan []*Message
	// Context ends when the claim is over for good: the revoke timeout has
	// passed, the subscriber stopped, or (Redis) the ownership was lost.
	Context() context.Context
	// Commit records msgs as processed, so that no later owner gets them
	// again. It returns ErrFenced (wrapped) when the claim no longer owns
	// the partition.
	Commit(ctx context.Context, msgs ...*Message) error
	// DeadLetter stores m, with extra headers appended, in the partition's
	// dead-letter destination (Kafka: topic "<topic>.dlq"; Redis: stream
	// "<stream>.dlq") and returns once the broker has acknowledged it.
	DeadLetter(ctx context.Context, m *Message, extra []Header) error
	// Lag is how many messages of the partition this claim has not
	// received yet, as last seen; -1 when unknown.
	Lag() int64
	// Buffered is how many messages the claim has fetched that the
	// consumer has not received yet: its next batches. It is counted when
	// the claim last added to the batch it offers, so once it equals the
	// messages sent, the next batch holds all of them (up to MaxBatch).
	Buffered() int64
}

// Transport creates the publishers and subscribers of one broker.
type Transport interface {
	// System names the broker for traces ("kafka" or "redis").
	System() string
	// NewPublisher creates a publisher; clientID names it to the broker.
	NewPublisher(clientID string, logger *slog.Logger) (Publisher, error)
	// NewSubscriber creates a group member.
	NewSubscriber(cfg SubscriberConfig) (Subscriber, error)
	// EnsureTopics creates the topics that do not exist yet.
	EnsureTopics(ctx context.Context, topics ...string) error
	// Check reports whether the broker is reachable and usable.
	Check(ctx context.Context) error
	// Backlog returns how many messages of topics group has not finished
	// (Kafka: end offsets minus committed offsets; Redis: entries not yet
	// delivered plus delivered but unacknowledged), summed over all
	// partitions; a topic that does not exist counts 0.
	Backlog(ctx context.Context, group string, topics ...string) (int64, error)
	// Close releases the transport's connections.
	Close() error
}

// PositionAttribute returns the span attribute that records a message's
// position on system: OpenTelemetry's messaging.kafka.offset on Kafka,
// messaging.<system>.entry_id elsewhere (a Redis stream entry id).
func PositionAttribute(system, position string) attribute.KeyValue {
	if system == "kafka" {
		if n, err := strconv.ParseInt(position, 10, 64); err == nil {
			return attribute.Int64("messaging.kafka.offset", n)
		}
	}
	return attribute.String("messaging."+system+".entry_id", position)
}

// ErrFenced is returned (wrapped) when a former owner of a partition tries
// to commit after it lost the partition.
var ErrFenced = errors.New("partition ownership lost")

// Partition returns the partition of key among n partitions with Kafka's
// default partitioner for keyed messages (murmur2, as the Java client and
// librdkafka's murmur2_random compute it), so that a key lands in the same
// partition whichever transport carries it.
func Partition(key []byte, n int) int32 {
	if n <= 1 {
		return 0
	}
	return int32(murmur2(key)&0x7fffffff) % int32(n)
}

// murmur2 is Kafka's 32-bit MurmurHash2 with its fixed seed.
func murmur2(data []byte) uint32 {
	const (
		seed = 0x9747b28c
		m    = 0x5bd1e995
		r    = 24
	)
	n := len(data)
	h := uint32(seed) ^ uint32(n)
	for i := 0; i+4 <= n; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := n &^ 3
	switch n % 4 {
	case 3:
		h ^= uint32(data[tail+2]) << 16
		fallthrough
	case 2:
		h ^= uint32(data[tail+1]) << 8
		fallthrough
	case 1:
		h ^= uint32(data[tail])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}
