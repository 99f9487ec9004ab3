package transporttest_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/transport/transporttest"
)

// A backlog counted before ends taken earlier leaves out what was written
// after them, whether the group has not read it, holds it unfinished or
// finished it; DeleteGroup refuses while a member runs and afterwards
// leaves no position behind.
func TestBacklogBeforeEnds(t *testing.T) {
	t.Parallel()
	for _, kind := range transporttest.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			tr := transporttest.New(t, kind, 2).Transport()
			const topic, group, before, after = "test.ends", "replay", 10, 7
			transporttest.Fill(t, tr, topic, before)
			ends, err := tr.Ends(ctx, topic, "test.missing")
			if err != nil {
				t.Fatal(err)
			}
			for key := range ends {
				if tp, _, err := transport.SplitEndsKey(key); err != nil || tp != topic {
					t.Fatalf("ends: key %q (%v), want only partitions of %s", key, err, topic)
				}
			}
			transporttest.Fill(t, tr, topic, after)
			backlogs := func() (beforeEnds, now int64) {
				t.Helper()
				b, err := tr.BacklogBefore(ctx, group, ends)
				if err != nil {
					t.Fatal(err)
				}
				n, err := transport.Backlog(ctx, tr, group, topic)
				if err != nil {
					t.Fatal(err)
				}
				return b, n
			}
			if b, n := backlogs(); b != before || n != before+after {
				t.Fatalf("group never ran: backlog %d before the ends and %d now, want %d and %d", b, n, before, before+after)
			}

			// Everything delivered, nothing finished.
			var received atomic.Int64
			_, stop := transporttest.Member(t, tr, transport.SubscriberConfig{Group: group, Topics: []string{topic}, RevokeTimeout: time.Second},
				func(c transport.Claim) {
					for batch := range c.Messages() {
						received.Add(int64(len(batch)))
					}
				})
			testkit.WaitFor(t, time.Minute, "every message delivered", func() bool { return received.Load() == before+after })
			if b, n := backlogs(); b != before || n != before+after {
				t.Fatalf("all delivered, none finished: backlog %d before the ends and %d now, want %d and %d", b, n, before, before+after)
			}
			stop()

			_, stop = transporttest.Member(t, tr, transport.SubscriberConfig{Group: group, Topics: []string{topic}}, transporttest.CommitAll)
			testkit.WaitFor(t, time.Minute, "every message finished", func() bool {
				b, n := backlogs()
				return b == 0 && n == 0
			})
			if err := tr.DeleteGroup(ctx, group, topic); !errors.Is(err, transport.ErrGroupInUse) {
				t.Fatalf("DeleteGroup with a member running: %v, want %v", err, transport.ErrGroupInUse)
			}
			if b, n := backlogs(); b != 0 || n != 0 {
				t.Fatalf("after a refused DeleteGroup: backlog %d before the ends and %d now, want 0 and 0", b, n)
			}
			stop()
			// Kafka may take a moment to see the member gone.
			testkit.WaitFor(t, time.Minute, "the group deleted", func() bool {
				err := tr.DeleteGroup(ctx, group, topic)
				if err != nil && !errors.Is(err, transport.ErrGroupInUse) {
					t.Fatal(err)
				}
				return err == nil
			})
			if b, n := backlogs(); b != before || n != before+after {
				t.Fatalf("group deleted: backlog %d before the ends and %d now, want %d and %d (its positions gone)", b, n, before, before+after)
			}
			if err := tr.DeleteGroup(ctx, group, topic); err != nil {
				t.Fatalf("DeleteGroup of a group that does not exist: %v", err)
			}
		})
	}
}
