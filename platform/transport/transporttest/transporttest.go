// Package transporttest runs the platform's test suites against every
// transport: it starts a throw-away broker of the kind asked for (kfake for
// Kafka, redis-server for Redis Streams), hands out a [transport.Transport]
// for it, stops and starts it, and reads topics back the way any other
// client of that broker would.
package transporttest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/redisstream"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
)

// Kinds lists the transports every suite runs against.
var Kinds = []string{"kafka", "redis"}

// Bus is one throw-away broker of some kind and a transport for it.
type Bus struct {
	kind       string
	partitions int
	kafka      *testkit.Broker
	redis      *testkit.RedisServer
	tr         transport.Transport
}

// New starts a broker of kind ("kafka" or "redis") for this test, with
// partitions partitions per topic; it stops when the test ends.
func New(t testing.TB, kind string, partitions int) *Bus {
	t.Helper()
	b := &Bus{kind: kind, partitions: partitions}
	switch kind {
	case "kafka":
		b.kafka = testkit.Kafka(t)
		b.tr = b.kafka.Transport(partitions)
	case "redis":
		b.redis = testkit.Redis(t)
		tr, err := redisstream.New(redisstream.Config{URL: b.redis.URL(), Partitions: partitions, LeaseTTL: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tr.Close() })
		b.tr = tr
	default:
		t.Fatalf("transporttest: unknown transport %q", kind)
	}
	return b
}

// Fill publishes n messages with distinct keys ("0" to n-1) to topic,
// creating it if need be, and waits until the broker has acknowledged them
// all.
func Fill(t testing.TB, tr transport.Transport, topic string, n int) {
	t.Helper()
	ctx := context.Background()
	if err := tr.EnsureTopics(ctx, topic); err != nil {
		t.Fatal(err)
	}
	pub, err := tr.NewPublisher("test", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for i := range n {
		if err := pub.Publish(ctx, &transport.Message{Topic: topic, Key: []byte(fmt.Sprint(i)), Value: []byte("x")}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if !pub.Flush(time.Minute) {
		t.Fatal("messages not acknowledged")
	}
}

// Member runs a member of a consumer group on tr, calling consume for each
// partition it comes to own, until stop is called or the test ends. stop
// returns once Run has, and fails the test if Run failed.
func Member(t testing.TB, tr transport.Transport, cfg transport.SubscriberConfig, consume func(transport.Claim)) (sub transport.Subscriber, stop func()) {
	t.Helper()
	sub, err := tr.NewSubscriber(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sub.Run(ctx, consume) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("subscriber of group %s: %v", cfg.Group, err)
			}
		})
	}
	t.Cleanup(stop)
	return sub, stop
}

// CommitAll is a consume function for [Member] that commits every batch
// of its claim as it comes.
func CommitAll(c transport.Claim) {
	for batch := range c.Messages() {
		if err := c.Commit(c.Context(), batch...); err != nil {
			return
		}
	}
}

// Kind returns "kafka" or "redis".
func (b *Bus) Kind() string { return b.kind }

// Transport returns the transport for the broker.
func (b *Bus) Transport() transport.Transport { return b.tr }

// Kafka returns the Kafka broker, or nil on another transport.
func (b *Bus) Kafka() *testkit.Broker { return b.kafka }

// Redis returns the Redis server, or nil on another transport.
func (b *Bus) Redis() *testkit.RedisServer { return b.redis }

// Stop kills the broker (its data stays); Start brings it back.
func (b *Bus) Stop() {
	if b.kafka != nil {
		b.kafka.Stop()
	} else {
		b.redis.Stop()
	}
}

// Start starts the broker again with its data.
func (b *Bus) Start() error {
	if b.kafka != nil {
		return b.kafka.Start()
	}
	return b.redis.Start()
}

// CreateTopic creates topic with the bus's partition count where topics are
// created up front (Kafka); elsewhere it does nothing.
func (b *Bus) CreateTopic(t testing.TB, topic string) {
	t.Helper()
	if b.kafka != nil {
		b.kafka.CreateTopic(t, topic, b.partitions)
	}
}

// ReadTopic reads every partition of topic from the beginning, as a plain
// client of the broker would (a Kafka consumer without a group; XRANGE on
// Redis), until done reports true for what was read, and returns it. Each
// partition's messages are in order. It fails the test after timeout.
func (b *Bus) ReadTopic(t testing.TB, topic string, timeout time.Duration, done func([]*transport.Message) bool) []*transport.Message {
	t.Helper()
	return b.read(t, topic, "", timeout, done)
}

// ReadDeadLetters reads the dead letters of topic's partitions (Kafka:
// topic "<topic>.dlq"; Redis: streams "<topic>:<p>.dlq") like ReadTopic.
func (b *Bus) ReadDeadLetters(t testing.TB, topic string, timeout time.Duration, done func([]*transport.Message) bool) []*transport.Message {
	t.Helper()
	if b.kafka != nil {
		return b.kafka.ReadTopic(t, topic+".dlq", timeout, done)
	}
	return b.read(t, topic, ".dlq", timeout, done)
}

func (b *Bus) read(t testing.TB, topic, suffix string, timeout time.Duration, done func([]*transport.Message) bool) []*transport.Message {
	t.Helper()
	if b.kafka != nil {
		return b.kafka.ReadTopic(t, topic, timeout, done)
	}
	rdb := b.redis.Client(t)
	deadline := time.Now().Add(timeout)
	// Like a Kafka consumer, read on from where each partition was left, so
	// that what done sees only ever grows at the end.
	var msgs []*transport.Message
	next := make([]string, b.partitions)
	count := make([]int64, b.partitions)
	for p := range next {
		next[p] = "-"
	}
	for {
		for p := 0; p < b.partitions; p++ {
			stream := fmt.Sprintf("%s:%d%s", topic, p, suffix)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			entries, err := rdb.XRange(ctx, stream, next[p], "+").Result()
			cancel()
			if err != nil && !errors.Is(err, redis.Nil) {
				if time.Now().After(deadline) {
					t.Fatalf("transporttest: XRANGE %s: %v", stream, err)
				}
				continue
			}
			for _, e := range entries {
				m := decode(topic, int32(p), e)
				m.Offset = count[p] // the entry's index, like a Kafka offset
				count[p]++
				next[p] = "(" + e.ID
				msgs = append(msgs, m)
			}
		}
		if done(msgs) {
			return msgs
		}
		if time.Now().After(deadline) {
			t.Fatalf("transporttest: read %d message(s) from %s%s in %s without reaching the expected state", len(msgs), topic, suffix, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// decode turns a stream entry into a message: the fields "key" and
// "payload" are the key and value, every other field a header, in order.
func decode(topic string, partition int32, e redis.XMessage) *transport.Message {
	m := &transport.Message{Topic: topic, Partition: partition, Offset: -1, Position: e.ID}
	// go-redis returns the fields as a map; restore the written order of
	// headers by name (CloudEvents attributes first, as the envelope
	// writes them, then the rest sorted).
	names := make([]string, 0, len(e.Values))
	for k := range e.Values {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool {
		ci, cj := strings.HasPrefix(names[i], "ce_"), strings.HasPrefix(names[j], "ce_")
		if ci != cj {
			return ci
		}
		return names[i] < names[j]
	})
	for _, k := range names {
		v := fmt.Sprint(e.Values[k])
		switch k {
		case "key":
			m.Key = []byte(v)
		case "payload":
			m.Value = []byte(v)
		default:
			m.Headers = append(m.Headers, transport.Header{Key: k, Value: []byte(v)})
		}
	}
	return m
}

// EndOffsets returns, per partition of topic, how many messages it holds
// (Kafka: the end offset).
func (b *Bus) EndOffsets(t testing.TB, topic string) map[int32]int64 {
	t.Helper()
	if b.kafka != nil {
		return b.kafka.EndOffsets(t, topic)
	}
	rdb := b.redis.Client(t)
	ends := map[int32]int64{}
	for p := 0; p < b.partitions; p++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		n, err := rdb.XLen(ctx, fmt.Sprintf("%s:%d", topic, p)).Result()
		cancel()
		if err != nil {
			t.Fatalf("transporttest: XLEN %s:%d: %v", topic, p, err)
		}
		ends[int32(p)] = n
	}
	return ends
}

// HasTopic reports whether topic exists (on Redis: has any entry).
func (b *Bus) HasTopic(topic string) bool {
	if b.kafka != nil {
		return b.kafka.HasTopic(topic)
	}
	c := redis.NewClient(&redis.Options{Addr: b.redis.Addr()})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for p := 0; p < b.partitions; p++ {
		if n, err := c.Exists(ctx, fmt.Sprintf("%s:%d", topic, p)).Result(); err == nil && n > 0 {
			return true
		}
	}
	return false
}

// Addr returns the broker's address: Kafka bootstrap servers, or the Redis
// URL.
func (b *Bus) Addr() string {
	if b.kafka != nil {
		return b.kafka.Addr()
	}
	return b.redis.URL()
}

// Open returns a transport of kind for addr (as from [Bus.Addr]), for a
// child process that has no Bus of its own.
func Open(kind, addr string, partitions int) (transport.Transport, error) {
	if kind == "redis" {
		return redisstream.New(redisstream.Config{URL: addr, Partitions: partitions, LeaseTTL: 2 * time.Second})
	}
	return broker.New(broker.Config{Brokers: addr, Partitions: partitions})
}

// Rewind moves group back to the beginning of every partition of topic, so
// that it receives everything again (the group must have no members).
func (b *Bus) Rewind(t testing.TB, group, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if b.kafka != nil {
		b.kafka.Rewind(t, group, topic)
		return
	}
	rdb := b.redis.Client(t)
	for p := 0; p < b.partitions; p++ {
		if err := rdb.XGroupSetID(ctx, fmt.Sprintf("%s:%d", topic, p), group, "0").Err(); err != nil {
			t.Fatalf("transporttest: rewind %s on %s:%d: %v", group, topic, p, err)
		}
	}
}
