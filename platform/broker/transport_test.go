package broker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// Keys land in the partition transport.Partition computes, the one the
// Redis transport uses too (and Kafka's Java clients).
func TestKeysLandWherePartitionSays(t *testing.T) {
	t.Parallel()
	tr := testkit.Kafka(t).Transport(6)
	pub, err := tr.NewPublisher("test", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	type landed struct {
		key string
		d   transport.Delivery
	}
	got := make(chan landed, 100)
	for i := 0; i < 100; i++ {
		key := fmt.Sprintf("order-%d", i)
		m := &transport.Message{Topic: "test.partitioning", Key: []byte(key), Value: []byte("x")}
		if err := pub.Publish(context.Background(), m, func(d transport.Delivery) { got <- landed{key, d} }); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 100; i++ {
		select {
		case l := <-got:
			if want := transport.Partition([]byte(l.key), 6); l.d.Partition != want {
				t.Errorf("key %s went to partition %d, transport.Partition says %d", l.key, l.d.Partition, want)
			}
		case err := <-pub.Failed():
			t.Fatal(err)
		case <-time.After(time.Minute):
			t.Fatal("no acknowledgement")
		}
	}
}
