package broker_test

import (
	"testing"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/switchyard/switchyard/platform/broker"
)

// librdkafka accepts the bounded buffers (it refuses, for instance, a
// fetch.max.bytes below message.max.bytes), and they add up to what the
// chart's service memory limit is said to cover.
func TestClientBuffersAreBounded(t *testing.T) {
	t.Parallel()
	cfg := broker.Config{Brokers: "127.0.0.1:1"}
	p, err := kafka.NewProducer(cfg.ProducerConfig("bounds"))
	if err != nil {
		t.Fatalf("producer refused its settings: %v", err)
	}
	p.Close()
	c, err := kafka.NewConsumer(cfg.ConsumerConfig("bounds", "bounds"))
	if err != nil {
		t.Fatalf("consumer refused its settings: %v", err)
	}
	c.Close()

	pc, cc := *cfg.ProducerConfig("x"), *cfg.ConsumerConfig("g", "x")
	for _, want := range []struct {
		m   kafka.ConfigMap
		key string
		max int
	}{
		{pc, "queue.buffering.max.kbytes", 16 * 1024},
		{pc, "queue.buffering.max.messages", 100000},
		{cc, "queued.max.messages.kbytes", 16 * 1024},
		{cc, "fetch.max.bytes", 8 << 20},
	} {
		v, ok := want.m[want.key].(int)
		if !ok || v <= 0 || v > want.max {
			t.Errorf("%s = %v, want a bound of at most %d", want.key, want.m[want.key], want.max)
		}
	}
	// Two producers (relay, dead letters) and one consumer per service.
	if total := 2*broker.ProducerQueueKiB + broker.ConsumerQueueKiB + broker.FetchMaxBytes/1024; total > 64*1024 {
		t.Errorf("client buffers %d KiB, more than the 64 MiB the chart's comment allows for", total)
	}
}

// A consumer catching up on a backlog never waits long for its next fetch:
// neither librdkafka's default second after its queue filled nor a broker's
// default 500 ms hold of a fetch for partitions that have nothing new
// (BenchmarkConsumerApply on Kafka: 13-20k events/s with the defaults,
// 28-39k with these).
func TestConsumerFetchesSoonAfterAFullQueue(t *testing.T) {
	t.Parallel()
	cc := *broker.Config{Brokers: "127.0.0.1:1"}.ConsumerConfig("g", "x")
	for key, most := range map[string]int{"fetch.queue.backoff.ms": 10, "fetch.wait.max.ms": 100} {
		if v, ok := cc[key].(int); !ok || v > most {
			t.Errorf("%s = %v, want at most %d", key, cc[key], most)
		}
	}
}
