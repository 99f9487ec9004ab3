package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/switchyard/switchyard/platform/transport"
)

// Transport is the Kafka [transport.Transport].
type Transport struct {
	cfg Config

	mu     sync.Mutex
	admin  *kafka.AdminClient // created on first use (adminClient)
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

// adminClient returns the transport's admin client, created on first use
// and kept until Close.
func (t *Transport) adminClient() (*kafka.AdminClient, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.admin == nil {
		admin, err := kafka.NewAdminClient(t.cfg.AdminConfig())
		if err != nil {
			return nil, fmt.Errorf("create Kafka admin client: %w", err)
		}
		t.admin = admin
	}
	return t.admin, nil
}

// Check asks the brokers for their metadata.
func (t *Transport) Check(ctx context.Context) error {
	admin, err := t.adminClient()
	if err != nil {
		return err
	}
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

// offsets returns the offsets spec names (kafka.EarliestOffsetSpec: the
// first retained; kafka.LatestOffsetSpec: the end) of partitions, by
// [transport.EndsKey], in one request.
func offsets(ctx context.Context, admin *kafka.AdminClient, partitions []kafka.TopicPartition, spec kafka.OffsetSpec) (map[string]int64, error) {
	req := make(map[kafka.TopicPartition]kafka.OffsetSpec, len(partitions))
	for _, tp := range partitions {
		req[tp] = spec
	}
	res, err := admin.ListOffsets(ctx, req, kafka.SetAdminRequestTimeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("list offsets: %w", err)
	}
	out := make(map[string]int64, len(res.ResultInfos))
	for tp, info := range res.ResultInfos {
		key := transport.EndsKey(*tp.Topic, tp.Partition)
		if info.Error.Code() != kafka.ErrNoError {
			return nil, fmt.Errorf("offset of %s: %w", key, info.Error)
		}
		out[key] = int64(info.Offset)
	}
	return out, nil
}

// Ends returns each partition's end offset (the offset its next message
// gets), as a decimal string; empty partitions are left out.
func (t *Transport) Ends(ctx context.Context, topics ...string) (transport.Ends, error) {
	admin, err := t.adminClient()
	if err != nil {
		return nil, err
	}
	md, err := admin.GetMetadata(nil, true, 5000)
	if err != nil {
		return nil, fmt.Errorf("kafka metadata: %w", err)
	}
	var partitions []kafka.TopicPartition
	for _, topic := range topics {
		tm, ok := md.Topics[topic]
		if !ok || tm.Error.Code() == kafka.ErrUnknownTopicOrPart {
			continue // does not exist: nothing in it yet
		}
		// Ends may be kept for good: a topic half known now must not
		// pass for an empty one.
		if tm.Error.Code() != kafka.ErrNoError {
			return nil, fmt.Errorf("metadata of %s: %w", topic, tm.Error)
		}
		for _, p := range tm.Partitions {
			partitions = append(partitions, kafka.TopicPartition{Topic: &tm.Topic, Partition: p.ID})
		}
	}
	ends := transport.Ends{}
	if len(partitions) == 0 {
		return ends, nil
	}
	high, err := offsets(ctx, admin, partitions, kafka.LatestOffsetSpec)
	if err != nil {
		return nil, err
	}
	for key, h := range high {
		if h > 0 {
			ends[key] = strconv.FormatInt(h, 10)
		}
	}
	return ends, nil
}

// BacklogBefore sums, over the partitions of ends, the end offset minus
// group's committed offset (a partition without a committed offset counts
// from its beginning).
func (t *Transport) BacklogBefore(ctx context.Context, group string, ends transport.Ends) (int64, error) {
	if len(ends) == 0 {
		return 0, nil
	}
	admin, err := t.adminClient()
	if err != nil {
		return 0, err
	}
	end := map[string]int64{}
	var partitions []kafka.TopicPartition
	for key, pos := range ends {
		topic, p, err := transport.SplitEndsKey(key)
		if err != nil {
			return 0, err
		}
		if end[key], err = strconv.ParseInt(pos, 10, 64); err != nil {
			return 0, fmt.Errorf("end of %s: %q is not an offset", key, pos)
		}
		partitions = append(partitions, kafka.TopicPartition{Topic: &topic, Partition: p})
	}
	low, err := offsets(ctx, admin, partitions, kafka.EarliestOffsetSpec)
	if err != nil {
		return 0, err
	}
	committed := map[string]int64{} // none: the group never committed there
	res, err := admin.ListConsumerGroupOffsets(ctx, []kafka.ConsumerGroupTopicPartitions{{Group: group, Partitions: partitions}})
	var kerr kafka.Error
	switch {
	case errors.As(err, &kerr) && kerr.Code() == kafka.ErrGroupIDNotFound:
	case err != nil:
		return 0, fmt.Errorf("offsets of %s: %w", group, err)
	default:
		for _, r := range res.ConsumerGroupsTopicPartitions {
			for _, tp := range r.Partitions {
				if tp.Error != nil {
					return 0, fmt.Errorf("offset of %s on %s/%d: %w", group, *tp.Topic, tp.Partition, tp.Error)
				}
				committed[transport.EndsKey(*tp.Topic, tp.Partition)] = int64(tp.Offset)
			}
		}
	}
	var backlog int64
	for key, e := range end {
		c, ok := committed[key]
		if !ok {
			c = -1
		}
		backlog += partitionBacklog(low[key], e, c)
	}
	return backlog, nil
}

// DeleteGroup deletes group; Kafka refuses while it has members. Kafka
// keeps a group's offsets for all its topics, so topics is not needed.
func (t *Transport) DeleteGroup(ctx context.Context, group string, _ ...string) error {
	admin, err := t.adminClient()
	if err != nil {
		return err
	}
	res, err := admin.DeleteConsumerGroups(ctx, []string{group})
	if err != nil {
		return fmt.Errorf("delete group %s: %w", group, err)
	}
	for _, r := range res.ConsumerGroupResults {
		switch r.Error.Code() {
		case kafka.ErrNoError, kafka.ErrGroupIDNotFound:
		case kafka.ErrNonEmptyGroup:
			return fmt.Errorf("delete group %s: %w: %w", r.Group, transport.ErrGroupInUse, r.Error)
		default:
			return fmt.Errorf("delete group %s: %w", r.Group, r.Error)
		}
	}
	return nil
}

// partitionBacklog is what a group has left to read in a partition holding
// offsets low to high-1 (high: the end it is counted to), given its committed offset (negative: none). What
// retention deleted is not left to read: a group without a commit starts
// at low (the consumers reset to the earliest retained), and one whose
// commit fell behind low resumes there. Counting from 0 instead would
// report a backlog, for ever, in a partition whose events all expired.
func partitionBacklog(low, high, committed int64) int64 {
	return max(0, high-max(committed, low))
}
