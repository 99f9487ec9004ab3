package broker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/transport/transporttest"
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

// A claim's lag is read from the client's cache, with no request to the
// broker: /metrics reads it for every partition on every scrape, and a
// request each (as a fix once had it) made a scrape take 160-350 ms under
// load.
func TestLagAsksNoBroker(t *testing.T) {
	t.Parallel()
	k := testkit.Kafka(t)
	tr := k.Transport(1)
	const topic, n = "test.lag", 20
	transporttest.Fill(t, tr, topic, n)
	claims := make(chan transport.Claim, 1)
	transporttest.Member(t, tr, transport.SubscriberConfig{Group: "lagger", Topics: []string{topic}, RevokeTimeout: time.Second},
		func(c transport.Claim) {
			claims <- c
			transporttest.CommitAll(c)
		})
	var c transport.Claim
	select {
	case c = <-claims:
	case <-time.After(time.Minute):
		t.Fatal("no partition assigned")
	}
	testkit.WaitFor(t, time.Minute, "the claim to catch up", func() bool { return c.Lag() == 0 })

	listOffsets := k.Requests(kmsg.ListOffsets)
	for range 50 {
		if lag := c.Lag(); lag != 0 {
			t.Fatalf("lag %d after catching up", lag)
		}
	}
	if got := listOffsets(); got != 0 {
		t.Fatalf("50 reads of the lag sent %d ListOffsets requests to the broker, want none", got)
	}
}
