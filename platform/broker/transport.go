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

// clients runs fn with an admin client and a plain client (it joins no
// group; it only reads watermarks), closed when fn returns.
func (t *Transport) clients(fn func(admin *kafka.AdminClient, cons *kafka.Consumer) error) error {
	admin, err := kafka.NewAdminClient(t.cfg.AdminConfig())
	if err != nil {
		return fmt.Errorf("create Kafka admin client: %w", err)
	}
	defer admin.Close()
	ccfg := t.cfg.AdminConfig()
	(*ccfg)["group.id"] = "switchyard-watermarks"
	cons, err := kafka.NewConsumer(ccfg)
	if err != nil {
		return fmt.Errorf("create Kafka client: %w", err)
	}
	defer cons.Close()
	return fn(admin, cons)
}

// Ends returns each partition's end offset (the offset its next message
// gets), as a decimal string; empty partitions are left out.
func (t *Transport) Ends(ctx context.Context, topics ...string) (transport.Ends, error) {
	ends := transport.Ends{}
	err := t.clients(func(admin *kafka.AdminClient, cons *kafka.Consumer) error {
		md, err := admin.GetMetadata(nil, true, 5000)
		if err != nil {
			return fmt.Errorf("kafka metadata: %w", err)
		}
		for _, topic := range topics {
			tm, ok := md.Topics[topic]
			if !ok || tm.Error.Code() == kafka.ErrUnknownTopicOrPart {
				continue // does not exist: nothing in it yet
			}
			// Ends may be kept for good: a topic half known now must not
			// pass for an empty one.
			if tm.Error.Code() != kafka.ErrNoError {
				return fmt.Errorf("metadata of %s: %w", topic, tm.Error)
			}
			for _, p := range tm.Partitions {
				if err := ctx.Err(); err != nil {
					return err
				}
				_, high, err := cons.QueryWatermarkOffsets(topic, p.ID, 5000)
				if err != nil {
					return fmt.Errorf("watermarks of %s/%d: %w", topic, p.ID, err)
				}
				if high > 0 {
					ends[transport.EndsKey(topic, p.ID)] = strconv.FormatInt(high, 10)
				}
			}
		}
		return nil
	})
	return ends, err
}

// BacklogBefore sums, over the partitions of ends, the end offset minus
// group's committed offset (a partition without a committed offset counts
// from its beginning).
func (t *Transport) BacklogBefore(ctx context.Context, group string, ends transport.Ends) (int64, error) {
	if len(ends) == 0 {
		return 0, nil
	}
	var backlog int64
	err := t.clients(func(admin *kafka.AdminClient, cons *kafka.Consumer) error {
		type bounds struct{ low, end int64 }
		marks := map[string]bounds{}
		var tps []kafka.TopicPartition
		for key, pos := range ends {
			topic, p, err := transport.SplitEndsKey(key)
			if err != nil {
				return err
			}
			end, err := strconv.ParseInt(pos, 10, 64)
			if err != nil {
				return fmt.Errorf("end of %s: %q is not an offset", key, pos)
			}
			low, _, err := cons.QueryWatermarkOffsets(topic, p, 5000)
			if err != nil {
				return fmt.Errorf("watermarks of %s: %w", key, err)
			}
			marks[key] = bounds{low, end}
			tps = append(tps, kafka.TopicPartition{Topic: &topic, Partition: p})
		}
		committed := map[string]int64{} // none: the group never committed there
		res, err := admin.ListConsumerGroupOffsets(ctx, []kafka.ConsumerGroupTopicPartitions{{Group: group, Partitions: tps}})
		var kerr kafka.Error
		switch {
		case errors.As(err, &kerr) && kerr.Code() == kafka.ErrGroupIDNotFound:
		case err != nil:
			return fmt.Errorf("offsets of %s: %w", group, err)
		default:
			for _, r := range res.ConsumerGroupsTopicPartitions {
				for _, tp := range r.Partitions {
					if tp.Error != nil {
						return fmt.Errorf("offset of %s on %s/%d: %w", group, *tp.Topic, tp.Partition, tp.Error)
					}
					committed[transport.EndsKey(*tp.Topic, tp.Partition)] = int64(tp.Offset)
				}
			}
		}
		for key, m := range marks {
			c, ok := committed[key]
			if !ok {
				c = -1
			}
			backlog += partitionBacklog(m.low, m.end, c)
		}
		return nil
	})
	return backlog, err
}

// DeleteGroup deletes group; Kafka refuses while it has members. Kafka
// keeps a group's offsets for all its topics, so topics is not needed.
func (t *Transport) DeleteGroup(ctx context.Context, group string, _ ...string) error {
	admin, err := kafka.NewAdminClient(t.cfg.AdminConfig())
	if err != nil {
		return fmt.Errorf("create Kafka admin client: %w", err)
	}
	defer admin.Close()
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
