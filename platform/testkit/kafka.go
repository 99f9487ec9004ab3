package testkit

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/switchyard/switchyard/platform/pgcluster"
)

// Broker is an in-process Kafka-protocol broker (kfake) with a fixed port
// and an on-disk log, so it can be stopped and started again to simulate an
// outage: clients see the same address and the same data.
type Broker struct {
	t       testing.TB
	port    int
	dataDir string

	mu      sync.Mutex
	cluster *kfake.Cluster
}

// Kafka starts a single-node broker for this test; it is closed when the
// test ends.
func Kafka(t testing.TB) *Broker {
	t.Helper()
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
		b.cluster, err = kfake.NewCluster(
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
	return fmt.Errorf("start kfake on %s: %w", b.Addr(), err)
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

// CreateTopic creates a topic through the admin API.
func (b *Broker) CreateTopic(t testing.TB, topic string, partitions int) {
	t.Helper()
	admin, err := kafka.NewAdminClient(&kafka.ConfigMap{"bootstrap.servers": b.Addr()})
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
