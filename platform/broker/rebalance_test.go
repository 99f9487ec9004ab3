package broker_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/transport/transporttest"
)

// A partition paused for a full backlog and then taken away must be
// fetched again when it comes back: a member whose paused partitions
// returned after a rebalance (a session timeout, a member joining and
// leaving) used to receive nothing from them ever again.
func TestPausedPartitionResumesAfterRebalance(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tr := testkit.Kafka(t).Transport(2)
	const topic, group, n = "test.paused", "pauser", 6000
	transporttest.Fill(t, tr, topic, n)

	// member runs a group member until stop is called; its consume waits
	// for gate before committing anything.
	member := func(gate <-chan struct{}) (transport.Subscriber, func()) {
		return transporttest.Member(t, tr, transport.SubscriberConfig{Group: group, Topics: []string{topic}, RevokeTimeout: time.Second},
			func(c transport.Claim) {
				select {
				case <-gate:
				case <-c.Context().Done():
					return
				}
				transporttest.CommitAll(c)
			})
	}
	gateA := make(chan struct{})
	a, stopA := member(gateA)
	defer stopA()
	// A stalls: its backlogs fill and it pauses its partitions.
	testkit.WaitFor(t, time.Minute, "A to pause a partition", func() bool { return broker.Pauses(a) > 0 })
	open := make(chan struct{})
	close(open)
	_, stopB := member(open) // the partitions move, and some come back to A
	close(gateA)
	time.Sleep(3 * time.Second) // not needed for correctness: lets B take part in a few rounds
	stopB()                     // everything is A's again, paused or not
	testkit.WaitFor(t, 2*time.Minute, "the group to consume everything", func() bool {
		b, err := transport.Backlog(ctx, tr, group, topic)
		return err == nil && b == 0
	})
}

// The same after a session timeout: a member whose heartbeats go
// unanswered loses its assignment (librdkafka's lost path, as when a
// process is SIGSTOPped past session.timeout.ms) and gets its paused
// partitions back when the session is restored. Seen in the chaos soak:
// the partitions came back paused and stayed so.
func TestPausedPartitionResumesAfterSessionLoss(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	k := testkit.Kafka(t)
	tr := k.Transport(2)
	const topic, group, n = "test.lost", "loser", 6000
	transporttest.Fill(t, tr, topic, n)
	gate := make(chan struct{})
	var ended atomic.Int64
	sub, _ := transporttest.Member(t, tr, transport.SubscriberConfig{Group: group, Topics: []string{topic}, RevokeTimeout: time.Second},
		func(c transport.Claim) {
			defer ended.Add(1)
			select {
			case <-gate:
			case <-c.Context().Done():
				return
			}
			transporttest.CommitAll(c)
		})
	testkit.WaitFor(t, time.Minute, "a partition to pause", func() bool { return broker.Pauses(sub) > 0 })
	release := k.StallHeartbeats()
	defer release()
	testkit.WaitFor(t, time.Minute, "the session to be lost", func() bool { return ended.Load() > 0 })
	release()
	close(gate)
	testkit.WaitFor(t, 2*time.Minute, "the member to consume everything", func() bool {
		b, err := transport.Backlog(ctx, tr, group, topic)
		return err == nil && b == 0
	})
}
