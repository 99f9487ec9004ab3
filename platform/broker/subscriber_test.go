package broker

import (
	"context"
	"testing"
	"time"
)

// Partitions taken away together share one revoke deadline: when it
// passes, every claim still working is cancelled at once, rather than one
// timeout per partition in turn.
func TestRevokedClaimsShareOneDeadline(t *testing.T) {
	t.Parallel()
	m := &members{}
	var claims []*claim
	for i := 0; i < 3; i++ {
		c := &claim{closed: make(chan struct{}), done: make(chan struct{})}
		c.ctx, c.cancel = context.WithCancel(context.Background())
		go func() { // a consume call stuck until its context ends
			defer close(c.done)
			<-c.ctx.Done()
		}()
		claims = append(claims, c)
	}
	deadline := make(chan time.Time, 1)
	deadline <- time.Now() // fires exactly once
	ended := make(chan struct{})
	go func() { m.end(claims, deadline); close(ended) }()
	select {
	case <-ended:
	case <-time.After(time.Minute):
		t.Fatal("one deadline did not end all three stuck claims")
	}
	for i, c := range claims {
		if c.ctx.Err() == nil {
			t.Errorf("claim %d was not cancelled", i)
		}
	}
}

// A claim that finishes in time is not cancelled before it returns.
func TestRevokedClaimFinishingInTime(t *testing.T) {
	t.Parallel()
	m := &members{}
	c := &claim{closed: make(chan struct{}), done: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	cancelledEarly := make(chan bool, 1)
	go func() {
		defer close(c.done)
		<-c.closed // finishes its batch when the partition is taken away
		cancelledEarly <- c.ctx.Err() != nil
	}()
	m.end([]*claim{c}, make(chan time.Time)) // a deadline that never fires
	if <-cancelledEarly {
		t.Fatal("the claim was cancelled before it could finish")
	}
}
