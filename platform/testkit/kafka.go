package testkit

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/kafkaserver"
	"github.com/switchyard/switchyard/platform/pgcluster"
	"github.com/switchyard/switchyard/platform/transport"
)

// Broker is an in-process Kafka-protocol broker (kfake) with a fixed port
// and an on-disk log, so it can be stopped and started again to simulate an
// outage: clients see the same address and the same data.
type Broker struct {
	t       testing.TB
	port    int
	dataDir string

	mu      sync.Mutex
	cluster *kafkaserver.Server
}

// Kafka starts a single-node broker for this test; it is closed when the
// test ends.
func Kafka(t testing.TB) *Broker {
	t.Helper()
	SkipShort(t, "a Kafka broker")
	port, err := pgcluster.FreePort()
	if err != nil {
		t.Fatalf("testkit: free port: %v", err)
	}
	b := &Broker{t: t, port: port, dataDir: t.TempDir()}
	if err := b.Start(); err != nil {
		t.Fatalf("testkit: %v", err)
	}
	t.Cleanup(b.Stop)
	return b
}

// Transport returns a Kafka transport for this broker whose topics get
// partitions partitions.
func (b *Broker) Transport(partitions int) *broker.Transport {
	tr, err := broker.New(broker.Config{Brokers: b.Addr(), Partitions: partitions})
	if err != nil {
		b.t.Fatalf("testkit: %v", err)
	}
	b.t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// Addr returns the bootstrap address ("127.0.0.1:port").
func (b *Broker) Addr() string { return fmt.Sprintf("127.0.0.1:%d", b.port) }

// Start starts the broker if it is stopped, reloading its data.
func (b *Broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cluster != nil {
		return nil
	}
	var err error
	// The port may linger briefly after a Stop; retry for a few seconds.
	for i := 0; i < 50; i++ {
		b.cluster, err = kafkaserver.Start(
			kfake.NumBrokers(1),
			kfake.Ports(b.port),
			kfake.DataDir(b.dataDir),
			kfake.ClusterID("switchyard-test"),
		)
		if err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("kfake on %s: %w", b.Addr(), err)
}

// StallHeartbeats holds every consumer group heartbeat unanswered (and what
// follows it on the same connection) until release is called: members'
// sessions time out the way they do when a member or the coordinator
// stalls, and members go through the lost-assignment path.
func (b *Broker) StallHeartbeats() (release func()) {
	release, _ = b.hold(kmsg.Heartbeat, func(kmsg.Request) kmsg.Response {
		return nil // then answered as usual
	})
	return release
}

// FailProduce holds every produce request unanswered (and what follows it
// on the same connection) until fail is called, and then answers the held
// ones, and only them, with MESSAGE_TOO_LARGE, an error producers do not
// retry: the broker fails messages already in flight, at a moment the
// test chooses. held counts the requests held so far.
func (b *Broker) FailProduce() (fail func(), held func() int64) {
	return b.hold(kmsg.Produce, func(r kmsg.Request) kmsg.Response {
		req := r.(*kmsg.ProduceRequest)
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.MessageTooLarge.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp
	})
}

// hold holds every request of kind key unanswered until release is
// called, and then answers each held one with answer's response, or as
// usual where that is nil; requests after the release are answered as
// usual. held counts the requests held so far.
func (b *Broker) hold(key kmsg.Key, answer func(kmsg.Request) kmsg.Response) (release func(), held func() int64) {
	b.mu.Lock()
	c := b.cluster
	b.mu.Unlock()
	done := make(chan struct{})
	var n atomic.Int64
	c.ControlKey(int16(key), func(r kmsg.Request) (kmsg.Response, error, bool) {
		select {
		case <-done:
			c.DropControl()
			return nil, nil, false
		default:
		}
		c.KeepControl()
		n.Add(1)
		c.SleepControl(func() { <-done })
		if resp := answer(r); resp != nil {
			return resp, nil, true
		}
		return nil, nil, false
	})
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }, n.Load
}

// Requests counts the requests of kind key the broker receives from now
// until it stops (every client's, the test's own included); the function
// returned reads the count.
func (b *Broker) Requests(key kmsg.Key) func() int64 {
	b.mu.Lock()
	c := b.cluster
	b.mu.Unlock()
	var n atomic.Int64
	c.ControlKey(int16(key), func(kmsg.Request) (kmsg.Response, error, bool) {
		n.Add(1)
		return nil, nil, false // not handled: kept, and answered as usual
	})
	return n.Load
}

// Stop closes the broker; clients see it as unreachable until Start.
func (b *Broker) Stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cluster != nil {
		b.cluster.Close()
		b.cluster = nil
	}
}

// clientConfig returns quiet client settings for this broker plus kv pairs.
func (b *Broker) clientConfig(kv ...any) *kafka.ConfigMap {
	m := broker.Config{Brokers: b.Addr()}.AdminConfig()
	for i := 0; i+1 < len(kv); i += 2 {
		(*m)[kv[i].(string)] = kv[i+1]
	}
	return m
}

// CreateTopic creates a topic through the admin API.
func (b *Broker) CreateTopic(t testing.TB, topic string, partitions int) {
	t.Helper()
	admin, err := kafka.NewAdminClient(b.clientConfig())
	if err != nil {
		t.Fatalf("testkit: admin client: %v", err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := admin.CreateTopics(ctx, []kafka.TopicSpecification{{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1}})
	if err != nil {
		t.Fatalf("testkit: create topic %s: %v", topic, err)
	}
	for _, r := range res {
		if r.Error.Code() != kafka.ErrNoError && r.Error.Code() != kafka.ErrTopicAlreadyExists {
			t.Fatalf("testkit: create topic %s: %v", topic, r.Error)
		}
	}
}

// Partitions returns the partition ids of topic.
func (b *Broker) Partitions(t testing.TB, topic string) []int32 {
	t.Helper()
	admin, err := kafka.NewAdminClient(b.clientConfig())
	if err != nil {
		t.Fatalf("testkit: admin client: %v", err)
	}
	defer admin.Close()
	md, err := admin.GetMetadata(&topic, false, 30000)
	if err != nil {
		t.Fatalf("testkit: metadata of %s: %v", topic, err)
	}
	tm, ok := md.Topics[topic]
	if !ok || tm.Error.Code() != kafka.ErrNoError {
		t.Fatalf("testkit: topic %s: not found (%v)", topic, tm.Error)
	}
	ids := make([]int32, 0, len(tm.Partitions))
	for _, p := range tm.Partitions {
		ids = append(ids, p.ID)
	}
	return ids
}

// HasTopic reports whether topic exists with at least one partition.
func (b *Broker) HasTopic(topic string) bool {
	admin, err := kafka.NewAdminClient(b.clientConfig())
	if err != nil {
		return false
	}
	defer admin.Close()
	md, err := admin.GetMetadata(&topic, false, 5000)
	if err != nil {
		return false
	}
	tm, ok := md.Topics[topic]
	return ok && tm.Error.Code() == kafka.ErrNoError && len(tm.Partitions) > 0
}

// EndOffsets returns the high watermark of each partition of topic.
func (b *Broker) EndOffsets(t testing.TB, topic string) map[int32]int64 {
	t.Helper()
	c, err := kafka.NewConsumer(b.clientConfig("group.id", "testkit-offsets"))
	if err != nil {
		t.Fatalf("testkit: consumer: %v", err)
	}
	defer c.Close()
	ends := map[int32]int64{}
	for _, p := range b.Partitions(t, topic) {
		_, high, err := c.QueryWatermarkOffsets(topic, p, 30000)
		if err != nil {
			t.Fatalf("testkit: watermarks of %s/%d: %v", topic, p, err)
		}
		ends[p] = high
	}
	return ends
}

// ReadTopic reads topic from the beginning of every partition with a plain
// consumer (no group, nothing Switchyard-specific) until done reports true
// for the messages read so far, then returns them. It fails the test after
// timeout.
func (b *Broker) ReadTopic(t testing.TB, topic string, timeout time.Duration, done func([]*transport.Message) bool) []*transport.Message {
	t.Helper()
	deadline := time.Now().Add(timeout)
	// The topic may not exist yet when the reader starts.
	for !b.HasTopic(topic) {
		if time.Now().After(deadline) {
			t.Fatalf("testkit: topic %s did not appear within %s", topic, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c, err := kafka.NewConsumer(b.clientConfig("group.id", "testkit-reader", "enable.auto.commit", false))
	if err != nil {
		t.Fatalf("testkit: consumer: %v", err)
	}
	defer c.Close()
	var tps []kafka.TopicPartition
	for _, p := range b.Partitions(t, topic) {
		tps = append(tps, kafka.TopicPartition{Topic: &topic, Partition: p, Offset: kafka.OffsetBeginning})
	}
	if err := c.Assign(tps); err != nil {
		t.Fatalf("testkit: assign %s: %v", topic, err)
	}
	var msgs []*transport.Message
	for !done(msgs) {
		if time.Now().After(deadline) {
			t.Fatalf("testkit: read %d message(s) from %s in %s without reaching the expected state", len(msgs), topic, timeout)
		}
		ev := c.Poll(200)
		if m, ok := ev.(*kafka.Message); ok && m.TopicPartition.Error == nil {
			msgs = append(msgs, broker.FromKafka(m))
		}
	}
	return msgs
}

// Rewind sets group's committed offsets on every partition of topic back to
// the beginning (the group must have no members).
func (b *Broker) Rewind(t testing.TB, group, topic string) {
	t.Helper()
	admin, err := kafka.NewAdminClient(b.clientConfig())
	if err != nil {
		t.Fatalf("testkit: admin client: %v", err)
	}
	defer admin.Close()
	var parts kafka.TopicPartitions
	for _, p := range b.Partitions(t, topic) {
		parts = append(parts, kafka.TopicPartition{Topic: &topic, Partition: p, Offset: 0})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.AlterConsumerGroupOffsets(ctx, []kafka.ConsumerGroupTopicPartitions{{Group: group, Partitions: parts}}); err != nil {
		t.Fatalf("testkit: rewind %s on %s: %v", group, topic, err)
	}
}
