package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/switchyard/switchyard/platform/transport"
)

// Transport is the Kafka [transport.Transport].
type Transport struct {
	cfg Config

	mu     sync.Mutex
	admin  *kafka.AdminClient // for Check; created on first use
	topics map[string]bool    // topics known to exist
}

// New returns the Kafka transport for cfg. It does not connect yet.
func New(cfg Config) (*Transport, error) {
	if cfg.Brokers == "" {
		return nil, errors.New("kafka transport: Brokers is required")
	}
	return &Transport{cfg: cfg.withDefaults(), topics: map[string]bool{}}, nil
}

// Config returns the transport's settings.
func (t *Transport) Config() Config { return t.cfg }

// System returns "kafka".
func (t *Transport) System() string { return "kafka" }

// EnsureTopics creates the topics that do not exist yet; see [EnsureTopics].
func (t *Transport) EnsureTopics(ctx context.Context, topics ...string) error {
	var missing []string
	t.mu.Lock()
	for _, tp := range topics {
		if !t.topics[tp] {
			missing = append(missing, tp)
		}
	}
	t.mu.Unlock()
	if len(missing) == 0 {
		return nil
	}
	if err := EnsureTopics(ctx, t.cfg, missing...); err != nil {
		return err
	}
	t.mu.Lock()
	for _, tp := range missing {
		t.topics[tp] = true
	}
	t.mu.Unlock()
	return nil
}

// Check asks the brokers for their metadata.
func (t *Transport) Check(ctx context.Context) error {
	t.mu.Lock()
	if t.admin == nil {
		admin, err := kafka.NewAdminClient(t.cfg.AdminConfig())
		if err != nil {
			t.mu.Unlock()
			return fmt.Errorf("create Kafka admin client: %w", err)
		}
		t.admin = admin
	}
	admin := t.admin
	t.mu.Unlock()
	timeout := 2 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	if _, err := admin.GetMetadata(nil, false, int(timeout.Milliseconds())); err != nil {
		return fmt.Errorf("kafka unreachable: %w", err)
	}
	return nil
}

// Close releases the admin client.
func (t *Transport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.admin != nil {
		t.admin.Close()
		t.admin = nil
	}
	return nil
}

// toKafka converts a transport message for producing to topic.
func toKafka(topic string, m *transport.Message) *kafka.Message {
	km := &kafka.Message{
		TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: kafka.PartitionAny},
		Key:            m.Key,
		Value:          m.Value,
		Headers:        make([]kafka.Header, len(m.Headers)),
	}
	for i, h := range m.Headers {
		km.Headers[i] = kafka.Header{Key: h.Key, Value: h.Value}
	}
	return km
}

// FromKafka converts a consumed Kafka message to a transport message.
func FromKafka(km *kafka.Message) *transport.Message {
	m := &transport.Message{
		Topic:     *km.TopicPartition.Topic,
		Key:       km.Key,
		Value:     km.Value,
		Headers:   make([]transport.Header, len(km.Headers)),
		Partition: km.TopicPartition.Partition,
		Offset:    int64(km.TopicPartition.Offset),
	}
	m.Position = fmt.Sprint(m.Offset)
	for i, h := range km.Headers {
		m.Headers[i] = transport.Header{Key: h.Key, Value: h.Value}
	}
	return m
}

var _ transport.Transport = (*Transport)(nil)

// NewPublisher creates an idempotent, ordered producer ([Config.ProducerConfig]).
func (t *Transport) NewPublisher(clientID string, logger *slog.Logger) (transport.Publisher, error) {
	return newPublisher(t, clientID, logger)
}

// NewSubscriber creates a group member ([Config.ConsumerConfig]).
func (t *Transport) NewSubscriber(cfg transport.SubscriberConfig) (transport.Subscriber, error) {
	if cfg.Group == "" || len(cfg.Topics) == 0 {
		return nil, errors.New("kafka subscriber: Group and Topics are required")
	}
	if cfg.RevokeTimeout <= 0 {
		cfg.RevokeTimeout = 10 * time.Second
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 500
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &subscriber{t: t, cfg: cfg}, nil
}

// Backlog sums, over every partition of topics, the end offset minus
// group's committed offset (a partition without a committed offset counts
// from its beginning).
func (t *Transport) Backlog(ctx context.Context, group string, topics ...string) (int64, error) {
	admin, err := kafka.NewAdminClient(t.cfg.AdminConfig())
	if err != nil {
		return 0, fmt.Errorf("create Kafka admin client: %w", err)
	}
	defer admin.Close()
	ccfg := t.cfg.AdminConfig() // a plain client: it only reads watermarks
	(*ccfg)["group.id"] = "switchyard-backlog"
	cons, err := kafka.NewConsumer(ccfg)
	if err != nil {
		return 0, fmt.Errorf("create Kafka client: %w", err)
	}
	defer cons.Close()
	md, err := admin.GetMetadata(nil, true, 5000)
	if err != nil {
		return 0, fmt.Errorf("kafka metadata: %w", err)
	}
	type marks struct{ low, high int64 }
	ends := map[string]marks{}
	var tps []kafka.TopicPartition
	for _, topic := range topics {
		tm, ok := md.Topics[topic]
		if !ok {
			continue
		}
		for _, p := range tm.Partitions {
			low, high, err := cons.QueryWatermarkOffsets(topic, p.ID, 5000)
			if err != nil {
				return 0, fmt.Errorf("watermarks of %s/%d: %w", topic, p.ID, err)
			}
			ends[fmt.Sprintf("%s/%d", topic, p.ID)] = marks{low, high}
			tps = append(tps, kafka.TopicPartition{Topic: &tm.Topic, Partition: p.ID})
		}
	}
	if len(tps) == 0 {
		return 0, nil
	}
	res, err := admin.ListConsumerGroupOffsets(ctx, []kafka.ConsumerGroupTopicPartitions{{Group: group, Partitions: tps}})
	if err != nil {
		return 0, fmt.Errorf("offsets of %s: %w", group, err)
	}
	var backlog int64
	for _, r := range res.ConsumerGroupsTopicPartitions {
		for _, tp := range r.Partitions {
			m := ends[fmt.Sprintf("%s/%d", *tp.Topic, tp.Partition)]
			backlog += partitionBacklog(m.low, m.high, int64(tp.Offset))
		}
	}
	return backlog, nil
}

// partitionBacklog is what a group has left to read in a partition holding
// offsets low to high-1, given its committed offset (negative: none). What
// retention deleted is not left to read: a group without a commit starts
// at low (the consumers reset to the earliest retained), and one whose
// commit fell behind low resumes there. Counting from 0 instead would
// report a backlog, for ever, in a partition whose events all expired.
func partitionBacklog(low, high, committed int64) int64 {
	return max(0, high-max(committed, low))
}
