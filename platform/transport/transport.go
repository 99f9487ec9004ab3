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
	"fmt"
	"log/slog"
	"strconv"
	"strings"
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
	// Ends returns where every partition of topics ends now: a message
	// written later lies after its partition's end. A topic that does not
	// exist, or a partition that never held a message, is left out.
	Ends(ctx context.Context, topics ...string) (Ends, error)
	// BacklogBefore returns how many of the messages before ends (taken
	// by Ends, now or long ago) group has not finished, summed over the
	// partitions (Kafka: from the committed offset up to the end offset;
	// Redis: entries up to the end not yet delivered, plus those
	// delivered but unacknowledged). Messages retention removed count 0,
	// and a group that never ran has all the others left.
	BacklogBefore(ctx context.Context, group string, ends Ends) (int64, error)
	// DeleteGroup removes group and everything the broker keeps for it on
	// topics (positions, pending entries), so that it no longer holds
	// back retention. It fails with ErrGroupInUse, changing nothing,
	// while the group has members; a group that does not exist is not an
	// error.
	DeleteGroup(ctx context.Context, group string, topics ...string) error
	// Close releases the transport's connections.
	Close() error
}

// Ends records where the partitions of some topics ended at one moment,
// keyed "<topic>/<partition>", each position encoded by the transport
// that took it. It is plain data: store it (as JSON, say) and hand it
// back to BacklogBefore of the same kind of transport.
type Ends map[string]string

// EndsKey is the key of a partition in [Ends].
func EndsKey(topic string, partition int32) string {
	return topic + "/" + strconv.Itoa(int(partition))
}

// SplitEndsKey returns the topic and partition of a key of [Ends].
func SplitEndsKey(key string) (topic string, partition int32, err error) {
	i := strings.LastIndexByte(key, '/')
	p, perr := strconv.ParseInt(key[i+1:], 10, 32)
	if i <= 0 || perr != nil {
		return "", 0, fmt.Errorf("%q is not <topic>/<partition>", key)
	}
	return key[:i], int32(p), nil
}

// Backlog returns how many messages of topics group has not finished now:
// its backlog before the topics' current ends.
func Backlog(ctx context.Context, t Transport, group string, topics ...string) (int64, error) {
	ends, err := t.Ends(ctx, topics...)
	if err != nil {
		return 0, err
	}
	return t.BacklogBefore(ctx, group, ends)
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

// ErrGroupInUse is returned (wrapped) by DeleteGroup while the group has
// members.
var ErrGroupInUse = errors.New("consumer group has members")

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
