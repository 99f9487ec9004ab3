// Package broker holds the Kafka client settings Switchyard relies on, in one
// place: the idempotent producer the relay and the dead-letter path use, the
// consumer the inbox consumer uses, and topic creation through the admin API.
package broker

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// Config says how to reach the brokers and how to create topics.
type Config struct {
	// Brokers is the bootstrap list, "host:port[,host:port...]".
	Brokers string
	// Partitions for topics Switchyard creates (default 6).
	Partitions int
	// ReplicationFactor for topics Switchyard creates (default 1).
	ReplicationFactor int
	// Retention is how long topics Switchyard creates keep events
	// (retention.ms); 0 keeps them for ever, so consumers can replay.
	Retention time.Duration
	// Extra librdkafka properties, applied last (for example SASL settings).
	Extra kafka.ConfigMap
}

func (c Config) withDefaults() Config {
	if c.Partitions <= 0 {
		c.Partitions = 6
	}
	if c.ReplicationFactor <= 0 {
		c.ReplicationFactor = 1
	}
	return c
}

// Bounds of the Kafka client's buffers, so that a service fits a memory
// limit: librdkafka's defaults allow a producer queue of 1 GiB and a
// consumer prefetch of 64 MiB (50 MiB per fetch response), enough to get a
// 256 MiB pod OOM-killed during a broker outage or a backlog. A service
// holds at most two producers (the relay's and the dead-letter one) and one
// consumer, so at most 2*16 + 16 + 8 = 56 MiB of client buffers.
const (
	// ProducerQueueKiB bounds a producer's queue of unacknowledged
	// messages (queue.buffering.max.kbytes); a full queue makes the relay
	// wait, it never drops an event.
	ProducerQueueKiB = 16 * 1024
	// ProducerQueueMessages bounds the same queue in messages
	// (queue.buffering.max.messages).
	ProducerQueueMessages = 100000
	// ConsumerQueueKiB bounds the consumer's prefetched messages
	// (queued.max.messages.kbytes), across its partitions.
	ConsumerQueueKiB = 16 * 1024
	// FetchMaxBytes bounds one fetch response (fetch.max.bytes); it stays
	// above Kafka's default largest message (1,000,000 bytes), so any event
	// the outbox accepts can still be fetched.
	FetchMaxBytes = 8 * 1024 * 1024
)

// ProducerConfig returns the settings of an idempotent, ordered producer:
// acks=all, retries forever (message.timeout.ms=0: an outage delays events
// but never drops or reorders them), a fatal error instead of a gap, and a
// queue bounded by ProducerQueueKiB.
func (c Config) ProducerConfig(clientID string) *kafka.ConfigMap {
	m := kafka.ConfigMap{
		"bootstrap.servers":                     c.Brokers,
		"client.id":                             clientID,
		"enable.idempotence":                    true,
		"acks":                                  "all",
		"enable.gapless.guarantee":              true,
		"message.timeout.ms":                    0,
		"max.in.flight.requests.per.connection": 5,
		"linger.ms":                             2,
		"batch.num.messages":                    10000,
		"queue.buffering.max.messages":          ProducerQueueMessages,
		"queue.buffering.max.kbytes":            ProducerQueueKiB,
		"compression.type":                      "lz4",
		// Kafka's Java default for keyed messages, which the Redis
		// transport computes too (transport.Partition).
		"partitioner":               "murmur2_random",
		"go.logs.channel.enable":    true,
		"go.delivery.report.fields": "key,headers",
		"enable.metrics.push":       false,
	}
	for k, v := range c.Extra {
		m[k] = v
	}
	return &m
}

// ConsumerConfig returns the settings of a group consumer whose offsets are
// stored by the application only after it has processed a message
// (enable.auto.offset.store=false) and committed in the background, with
// its prefetch bounded by ConsumerQueueKiB and FetchMaxBytes.
func (c Config) ConsumerConfig(group, clientID string) *kafka.ConfigMap {
	m := kafka.ConfigMap{
		"bootstrap.servers":          c.Brokers,
		"group.id":                   group,
		"client.id":                  clientID,
		"enable.auto.commit":         true,
		"auto.commit.interval.ms":    1000,
		"enable.auto.offset.store":   false,
		"auto.offset.reset":          "earliest",
		"session.timeout.ms":         10000,
		"heartbeat.interval.ms":      1000,
		"queued.max.messages.kbytes": ConsumerQueueKiB,
		"queued.min.messages":        10000,
		// Catching up on a backlog used to stall for up to a second at a
		// time, twice over. librdkafka stops fetching while its shared
		// queue holds more than queued.min.messages and looks again only
		// after fetch.queue.backoff.ms (default 1 s), although Poll drains
		// the queue into the claims' backlogs within milliseconds. And a
		// partition that becomes fetchable while a fetch for the others is
		// in flight waits for that fetch, which the broker holds for up to
		// fetch.wait.max.ms (default 500 ms) when those others have nothing
		// new. Neither wait touches latency at low load: the broker answers
		// a fetch as soon as a message arrives. The cost is at idle, where
		// each consumer now asks each broker ten times a second, not twice.
		"fetch.queue.backoff.ms": 10,
		"fetch.wait.max.ms":      100,
		"fetch.max.bytes":        FetchMaxBytes,
		"go.logs.channel.enable": true,
		"enable.metrics.push":    false,
	}
	for k, v := range c.Extra {
		m[k] = v
	}
	return &m
}

// AdminConfig returns the settings of an admin client.
func (c Config) AdminConfig() *kafka.ConfigMap {
	m := kafka.ConfigMap{"bootstrap.servers": c.Brokers, "enable.metrics.push": false, "log_level": 4}
	for k, v := range c.Extra {
		m[k] = v
	}
	return &m
}

// NewProducer creates a producer with [Config.ProducerConfig] whose
// librdkafka log lines go to logger.
func NewProducer(c Config, clientID string, logger *slog.Logger) (*kafka.Producer, error) {
	p, err := kafka.NewProducer(c.ProducerConfig(clientID))
	if err != nil {
		return nil, fmt.Errorf("create Kafka producer: %w", err)
	}
	go forwardLogs(p.Logs(), logger)
	return p, nil
}

// NewConsumer creates a consumer with [Config.ConsumerConfig] whose
// librdkafka log lines go to logger.
func NewConsumer(c Config, group, clientID string, logger *slog.Logger) (*kafka.Consumer, error) {
	cons, err := kafka.NewConsumer(c.ConsumerConfig(group, clientID))
	if err != nil {
		return nil, fmt.Errorf("create Kafka consumer: %w", err)
	}
	go forwardLogs(cons.Logs(), logger)
	return cons, nil
}

func forwardLogs(logs chan kafka.LogEvent, logger *slog.Logger) {
	if logger == nil {
		logger = slog.Default()
	}
	for ev := range logs {
		level := slog.LevelDebug
		switch {
		case ev.Level <= 4:
			// Warnings, and errors too: librdkafka reports transient
			// connection trouble (which it retries) as errors.
			level = slog.LevelWarn
		case ev.Level <= 6:
			level = slog.LevelInfo
		}
		if ev.Tag == "CONFWARN" {
			// Warnings about settings chosen on purpose (e.g. the
			// "experimental" gapless guarantee).
			level = slog.LevelDebug
		}
		logger.Log(context.Background(), level, ev.Message, "component", "librdkafka", "facility", ev.Tag, "client", ev.Name)
	}
}

// EnsureTopics creates the topics that do not exist yet, with c's partition
// count and replication factor. Topics that exist are left as they are.
func EnsureTopics(ctx context.Context, c Config, topics ...string) error {
	if len(topics) == 0 {
		return nil
	}
	c = c.withDefaults()
	admin, err := kafka.NewAdminClient(c.AdminConfig())
	if err != nil {
		return fmt.Errorf("create Kafka admin client: %w", err)
	}
	defer admin.Close()
	specs := make([]kafka.TopicSpecification, 0, len(topics))
	for _, t := range topics {
		retention := "-1"
		if c.Retention > 0 {
			retention = strconv.FormatInt(c.Retention.Milliseconds(), 10)
		}
		specs = append(specs, kafka.TopicSpecification{Topic: t, NumPartitions: c.Partitions, ReplicationFactor: c.ReplicationFactor,
			Config: map[string]string{"retention.ms": retention}})
	}
	timeout := 30 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	res, err := admin.CreateTopics(ctx, specs, kafka.SetAdminOperationTimeout(timeout))
	if err != nil {
		return fmt.Errorf("create topics %v: %w", topics, err)
	}
	for _, r := range res {
		if code := r.Error.Code(); code != kafka.ErrNoError && code != kafka.ErrTopicAlreadyExists {
			return fmt.Errorf("create topic %s: %w", r.Topic, r.Error)
		}
	}
	return nil
}
