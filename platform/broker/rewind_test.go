package broker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/transport/transporttest"
)

// A group that has consumed a topic reads all of it again after
// RewindGroup.
func TestRewindGroup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	k := testkit.Kafka(t)
	tr := k.Transport(2)
	const topic, group, n = "test.rewind", "rewinder", 10
	transporttest.Fill(t, tr, topic, n)

	// Consume and commit everything, then leave the group.
	_, stop := transporttest.Member(t, tr, transport.SubscriberConfig{Group: group, Topics: []string{topic}}, transporttest.CommitAll)
	testkit.WaitFor(t, time.Minute, "the group to consume everything", func() bool {
		b, err := transport.Backlog(ctx, tr, group, topic)
		return err == nil && b == 0
	})
	stop()

	// Members may take a moment to be gone from the group's view.
	testkit.WaitFor(t, time.Minute, "the rewind to be accepted", func() bool {
		return broker.RewindGroup(ctx, tr.Config(), group, topic) == nil
	})
	testkit.WaitFor(t, time.Minute, fmt.Sprintf("the backlog to be all %d messages again", n), func() bool {
		b, err := transport.Backlog(ctx, tr, group, topic)
		return err == nil && b == n
	})
}
