package transporttest_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/transport/transporttest"
)

// Messages a claim fetched and its consumer never received go to the
// partition's next owner, so once the claim has stopped it counts none of
// them as its buffer: the consumer's buffered metric would otherwise count
// them twice, or forever.
func TestStoppedClaimHasNothingBuffered(t *testing.T) {
	t.Parallel()
	for _, kind := range transporttest.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			tr := transporttest.New(t, kind, 1).Transport()
			const topic, n = "test.buffered", 5
			transporttest.Fill(t, tr, topic, n)
			claims := make(chan transport.Claim, 1)
			// Never receives: what the claim fetches stays in its buffer.
			_, stop := transporttest.Member(t, tr, transport.SubscriberConfig{Group: "buffering", Topics: []string{topic}, RevokeTimeout: time.Second},
				func(c transport.Claim) {
					claims <- c
					<-c.Context().Done()
				})
			var c transport.Claim
			select {
			case c = <-claims:
			case <-time.After(time.Minute):
				t.Fatal("no partition assigned")
			}
			testkit.WaitFor(t, time.Minute, fmt.Sprintf("%d messages buffered", n), func() bool { return c.Buffered() == n })
			stop()
			if got := c.Buffered(); got != 0 {
				t.Fatalf("stopped claim: %d buffered, want 0", got)
			}
		})
	}
}
