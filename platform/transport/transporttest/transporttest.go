// Package transporttest runs the platform's test suites against every
// transport: it starts a throw-away broker of the kind asked for (kfake for
// Kafka, redis-server for Redis Streams), hands out a [transport.Transport]
// for it, stops and starts it, and reads topics back the way any other
// client of that broker would.
package transporttest

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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
	for {
		var msgs []*transport.Message
		for p := 0; p < b.partitions; p++ {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			entries, err := rdb.XRange(ctx, fmt.Sprintf("%s:%d%s", topic, p, suffix), "-", "+").Result()
			cancel()
			if err != nil && err != redis.Nil {
				if time.Now().After(deadline) {
					t.Fatalf("transporttest: XRANGE %s:%d%s: %v", topic, p, suffix, err)
				}
				continue
			}
			for _, e := range entries {
				msgs = append(msgs, decode(topic, int32(p), e))
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
