package redisstream

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
)

const testTopic = "switchyard.test"

// newTransport returns a transport on srv with a short lease, closed when
// the test ends.
func newTransport(t testing.TB, srv *testkit.RedisServer, mod ...func(*Config)) *Transport {
	t.Helper()
	cfg := Config{
		URL:      srv.URL(),
		LeaseTTL: time.Second,
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		// Tests run maintenance passes themselves.
		MaintainInterval: time.Hour,
	}
	for _, m := range mod {
		m(&cfg)
	}
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// event returns message seq of key, with CloudEvents-style headers.
func event(key string, seq int) *transport.Message {
	return &transport.Message{
		Topic: testTopic,
		Key:   []byte(key),
		Value: []byte(key + "/" + strconv.Itoa(seq)),
		Headers: []transport.Header{
			{Key: "ce_id", Value: []byte(fmt.Sprintf("%s-%d", key, seq))},
			{Key: "ce_type", Value: []byte("test.Event")},
			{Key: "traceparent", Value: []byte("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")},
			{Key: "content-type", Value: []byte("application/protobuf")},
		},
	}
}

// events returns messages 0 to n-1 of key.
func events(key string, n int) []*transport.Message {
	msgs := make([]*transport.Message, n)
	for seq := range msgs {
		msgs[seq] = event(key, seq)
	}
	return msgs
}

// seqOf returns the sequence number in an event's payload.
func seqOf(t testing.TB, m *transport.Message) (key string, seq int) {
	t.Helper()
	for i := len(m.Value) - 1; i >= 0; i-- {
		if m.Value[i] == '/' {
			n, err := strconv.Atoi(string(m.Value[i+1:]))
			if err != nil {
				t.Fatalf("payload %q: %v", m.Value, err)
			}
			return string(m.Value[:i]), n
		}
	}
	t.Fatalf("payload %q has no sequence", m.Value)
	return "", 0
}

// publish sends msgs through one publisher and waits for every ack.
func publish(t testing.TB, tr *Transport, msgs []*transport.Message) []transport.Delivery {
	t.Helper()
	p, err := tr.NewPublisher("test", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var mu sync.Mutex
	var acks []transport.Delivery
	for _, m := range msgs {
		if err := p.Publish(context.Background(), m, func(d transport.Delivery) {
			mu.Lock()
			acks = append(acks, d)
			mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
	}
	if !p.Flush(30 * time.Second) {
		t.Fatal("publisher did not flush")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(acks) != len(msgs) {
		t.Fatalf("%d acks for %d messages", len(acks), len(msgs))
	}
	return acks
}

// member is a running group member that records what it commits.
type member struct {
	sub    *subscriber
	cancel context.CancelFunc
	done   chan error

	mu        sync.Mutex
	committed []*transport.Message
	order     []int64 // commitOrder at each commit
}

// commitOrder numbers commits across all members: a partition changes hands
// only after its former owner's work ended, so this order is the order in
// which the group applied the messages.
var commitOrder atomic.Int64

// record notes that msg was committed.
func (m *member) record(msg *transport.Message) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.committed = append(m.committed, msg)
	m.order = append(m.order, commitOrder.Add(1))
}

// allCommitted returns the messages members committed, in commit order.
func allCommitted(members ...*member) []*transport.Message {
	type rec struct {
		n   int64
		msg *transport.Message
	}
	var recs []rec
	for _, m := range members {
		m.mu.Lock()
		for i, msg := range m.committed {
			recs = append(recs, rec{m.order[i], msg})
		}
		m.mu.Unlock()
	}
	slices.SortFunc(recs, func(a, b rec) int { return cmp.Compare(a.n, b.n) })
	out := make([]*transport.Message, len(recs))
	for i, r := range recs {
		out[i] = r.msg
	}
	return out
}

// startMember runs a member of group on testTopic. consume, when not nil,
// replaces the default one (commit every message) for each claim.
func startMember(t testing.TB, tr *Transport, group string, consume func(*member, transport.Claim)) *member {
	t.Helper()
	s, err := tr.newSubscriber(transport.SubscriberConfig{Group: group, Topics: []string{testTopic}, RevokeTimeout: 5 * time.Second, MaxBatch: 64})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{sub: s, cancel: cancel, done: make(chan error, 1)}
	if consume == nil {
		consume = (*member).commitAll
	}
	go func() {
		m.done <- s.Run(ctx, func(c transport.Claim) { consume(m, c) })
	}()
	t.Cleanup(func() { m.stop(t) })
	return m
}

// commitAll records and commits every message of c.
func (m *member) commitAll(c transport.Claim) {
	for batch := range c.Messages() {
		for _, msg := range batch {
			if err := c.Commit(c.Context(), msg); err != nil {
				return
			}
			m.record(msg)
		}
	}
}

// stop ends the member's Run and waits for it.
func (m *member) stop(t testing.TB) {
	m.sub.frozen.Store(false)
	m.cancel()
	select {
	case err := <-m.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		m.done <- nil
	case <-time.After(30 * time.Second):
		t.Errorf("Run did not return")
	}
}

// held returns the claims of the partitions the member owns and is not
// giving back, by partition: what the subscriber holds, which its consume
// calls may not have started on yet.
func (m *member) held() map[int32]transport.Claim {
	held := map[int32]transport.Claim{}
	for _, c := range m.sub.ownedClaims() {
		if !c.releasing.Load() && !c.lost.Load() {
			held[c.partition] = c
		}
	}
	return held
}

// owned returns the partitions the member owns and is not giving back.
func (m *member) owned() []int32 {
	ps := slices.Collect(maps.Keys(m.held()))
	slices.Sort(ps)
	return ps
}

func (m *member) committedCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.committed)
}

// claim returns the member's claim of partition p, nil if it holds none.
func (m *member) claim(p int32) transport.Claim { return m.held()[p] }

// keysOf returns n distinct keys, one per partition at least when n >= 6.
func keysOf(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("agg-%03d", i)
	}
	return keys
}
