package redisstream

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
)

// TestPerKeyOrder sends 10,000 messages over 100 keys through two members
// and checks that every key's messages arrive complete and in order, with
// their headers, and that the stream entries show them as fields.
func TestPerKeyOrder(t *testing.T) {
	t.Parallel()
	srv := testkit.Redis(t)
	tr := newTransport(t, srv)
	keys := keysOf(100)
	var msgs []*transport.Message
	for seq := 0; seq < 100; seq++ {
		for _, k := range keys {
			msgs = append(msgs, event(k, seq))
		}
	}
	a := startMember(t, tr, "orders", nil)
	b := startMember(t, tr, "orders", nil)
	publish(t, tr, msgs)
	testkit.WaitFor(t, 60*time.Second, "all messages committed", func() bool {
		return a.committedCount()+b.committedCount() >= len(msgs)
	})
	next := map[string]int{}
	for _, msg := range allCommitted(a, b) {
		k, seq := seqOf(t, msg)
		if seq != next[k] {
			t.Fatalf("key %s: got message %d, want %d", k, seq, next[k])
		}
		next[k]++
		if msg.Header("ce_id") == "" || msg.Header("traceparent") == "" || string(msg.Key) != k {
			t.Fatalf("message %s/%d lost its key or headers: %+v", k, seq, msg)
		}
		if p := transport.Partition(msg.Key, 6); msg.Partition != p {
			t.Fatalf("key %s read from partition %d, want %d", k, msg.Partition, p)
		}
	}
	for _, k := range keys {
		if next[k] != 100 {
			t.Fatalf("key %s: %d messages, want 100", k, next[k])
		}
	}
	// The entry fields as redis-cli XRANGE shows them.
	entries, err := srv.Client(t).XRange(context.Background(), streamKey(testTopic, transport.Partition([]byte(keys[0]), 6)), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ce_id", "ce_type", "traceparent", "content-type", "key", "payload"} {
		if _, ok := entries[0].Values[f]; !ok {
			t.Fatalf("stream entry has no field %q: %v", f, entries[0].Values)
		}
	}
}

// TestAckedEntriesSurviveKill publishes while Redis is killed with SIGKILL,
// restarts it and checks that every acknowledged entry is there.
func TestAckedEntriesSurviveKill(t *testing.T) {
	t.Parallel()
	srv := testkit.Redis(t)
	tr := newTransport(t, srv)
	p, err := tr.NewPublisher("test", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var mu sync.Mutex
	acked := map[string]string{} // position -> payload
	var count atomic.Int64
	go func() {
		for seq := 0; ; seq++ {
			m := event("k"+string(rune('a'+seq%26)), seq)
			payload := string(m.Value)
			err := p.Publish(context.Background(), m, func(d transport.Delivery) {
				mu.Lock()
				acked[streamKey(testTopic, d.Partition)+" "+d.Position] = payload
				mu.Unlock()
				count.Add(1)
			})
			if err != nil {
				return
			}
		}
	}()
	testkit.WaitFor(t, 30*time.Second, "some entries acknowledged", func() bool { return count.Load() >= 2000 })
	srv.Stop()
	select {
	case err := <-p.Failed():
		t.Logf("publisher failed as expected: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("publisher did not fail with Redis gone")
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	c := srv.Client(t)
	for at, payload := range acked {
		var stream, id string
		for i := range at {
			if at[i] == ' ' {
				stream, id = at[:i], at[i+1:]
			}
		}
		got, err := c.XRange(context.Background(), stream, id, id).Result()
		if err != nil || len(got) != 1 || got[0].Values["payload"] != payload {
			t.Fatalf("acknowledged entry %s (%s) after kill -9 and restart: %v, %v", at, payload, got, err)
		}
	}
	t.Logf("%d acknowledged entries all survived kill -9", len(acked))
}

// TestJoinAndDeath: a member alone owns every partition; a second one joins
// and gets half; the first dies (no heartbeat, no commits) and the second
// takes its partitions over with their uncommitted entries, at a higher
// epoch. Nothing is lost on the way.
func TestJoinAndDeath(t *testing.T) {
	t.Parallel()
	srv := testkit.Redis(t)
	tr := newTransport(t, srv)
	var dead atomic.Bool
	a := startMember(t, tr, "g", func(m *member, c transport.Claim) {
		for batch := range c.Messages() {
			for _, msg := range batch {
				if dead.Load() {
					continue // a dead process commits nothing
				}
				if err := c.Commit(c.Context(), msg); err != nil {
					return
				}
				m.record(msg)
			}
		}
	})
	testkit.WaitFor(t, 10*time.Second, "the first member owning all 6 partitions", func() bool { return len(a.owned()) == 6 })
	keys := keysOf(30)
	var msgs []*transport.Message
	for _, k := range keys {
		msgs = append(msgs, event(k, 0))
	}
	publish(t, tr, msgs)

	b := startMember(t, tr, "g", nil)
	testkit.WaitFor(t, 15*time.Second, "the partitions split 3/3 after the join", func() bool {
		return len(a.owned()) == 3 && len(b.owned()) == 3
	})
	epochs := map[int32]int64{}
	for _, p := range a.owned() {
		epochs[p] = a.claim(p).Epoch()
	}

	// A dies: it stops heartbeating and committing.
	dead.Store(true)
	a.sub.frozen.Store(true)
	msgs = msgs[:0]
	for _, k := range keys {
		msgs = append(msgs, event(k, 1))
	}
	publish(t, tr, msgs)
	died := time.Now()
	var took map[int32]transport.Claim
	testkit.WaitFor(t, 20*time.Second, "the survivor owning all 6 partitions", func() bool {
		took = b.held()
		return len(took) == 6
	})
	t.Logf("takeover after %s (lease TTL %s)", time.Since(died).Round(10*time.Millisecond), tr.cfg.LeaseTTL)
	for p, e := range epochs {
		if got := took[p].Epoch(); got <= e {
			t.Fatalf("partition %d: new owner's epoch %d, former owner's %d", p, got, e)
		}
	}
	testkit.WaitFor(t, 20*time.Second, "every key's second message committed", func() bool {
		return a.committedCount()+b.committedCount() >= 2*len(keys)
	})
	seen := map[string]int{}
	for _, msg := range allCommitted(a, b) {
		k, seq := seqOf(t, msg)
		if seq != seen[k] {
			t.Fatalf("key %s: message %d committed after %d", k, seq, seen[k]-1)
		}
		seen[k]++
	}
	for _, k := range keys {
		if seen[k] != 2 {
			t.Fatalf("key %s: %d messages committed, want 2", k, seen[k])
		}
	}
}

// TestPausedMemberIsFenced: a member holding an uncommitted message is
// paused past its lease; another takes the partition and gets the message
// again; the paused member's Commit then fails with ErrFenced.
func TestPausedMemberIsFenced(t *testing.T) {
	t.Parallel()
	srv := testkit.Redis(t)
	tr := newTransport(t, srv)
	held := make(chan struct {
		c   transport.Claim
		msg *transport.Message
	}, 1)
	a := startMember(t, tr, "g", func(m *member, c transport.Claim) {
		for batch := range c.Messages() {
			select {
			case held <- struct {
				c   transport.Claim
				msg *transport.Message
			}{c, batch[0]}:
			default:
			}
		}
		<-c.Context().Done()
	})
	testkit.WaitFor(t, 10*time.Second, "the member owning all partitions", func() bool { return len(a.owned()) == 6 })
	publish(t, tr, []*transport.Message{event("k", 0)})
	h := <-held
	a.sub.frozen.Store(true) // paused: no heartbeat, no lease refresh

	b := startMember(t, tr, "g", nil)
	testkit.WaitFor(t, 20*time.Second, "the other member committing the message", func() bool { return b.committedCount() == 1 })
	b.mu.Lock()
	got := b.committed[0]
	b.mu.Unlock()
	if got.Position != h.msg.Position || got.Deliveries < 2 {
		t.Fatalf("new owner got %s (deliveries %d), want %s delivered twice", got.Position, got.Deliveries, h.msg.Position)
	}
	epoch := int64(-1) // no claim
	if c := b.claim(h.c.Partition()); c != nil {
		epoch = c.Epoch()
	}
	if epoch <= h.c.Epoch() {
		t.Fatalf("new owner's epoch %d not above the paused one's %d", epoch, h.c.Epoch())
	}
	err := h.c.Commit(context.Background(), h.msg)
	if !errors.Is(err, transport.ErrFenced) {
		t.Fatalf("paused member's Commit = %v, want ErrFenced", err)
	}
	testkit.WaitFor(t, 10*time.Second, "the paused member's claim context ending", func() bool { return h.c.Context().Err() != nil })
}

// TestTrimmedPendingEntryDoesNotLoop: entries pending for a group whose
// messages were trimmed away are acknowledged and counted once, not
// delivered, and the entries after them still arrive.
func TestTrimmedPendingEntryDoesNotLoop(t *testing.T) {
	t.Parallel()
	srv := testkit.Redis(t)
	tr := newTransport(t, srv)
	a := startMember(t, tr, "g", func(m *member, c transport.Claim) {
		for range c.Messages() { // read, never commit
		}
	})
	testkit.WaitFor(t, 10*time.Second, "the member owning all partitions", func() bool { return len(a.owned()) == 6 })
	acks := publish(t, tr, []*transport.Message{event("k", 0), event("k", 1), event("k", 2)})
	stream := streamKey(testTopic, acks[0].Partition)
	rdb := srv.Client(t)
	ctx := context.Background()
	testkit.WaitFor(t, 10*time.Second, "three pending entries", func() bool {
		p, err := rdb.XPending(ctx, stream, "g").Result()
		return err == nil && p.Count == 3
	})
	a.stop(t)
	// Someone trims the first two away (as a MAXLEN on XADD would).
	if err := rdb.XTrimMinID(ctx, stream, acks[2].Position).Err(); err != nil {
		t.Fatal(err)
	}
	publish(t, tr, []*transport.Message{event("k", 3)})
	b := startMember(t, tr, "g", nil)
	testkit.WaitFor(t, 10*time.Second, "the surviving entries committed", func() bool { return b.committedCount() == 2 })
	b.mu.Lock()
	for i, msg := range b.committed {
		if _, seq := seqOf(t, msg); seq != i+2 {
			t.Fatalf("committed message %d is %d, want %d", i, seq, i+2)
		}
	}
	b.mu.Unlock()
	testkit.WaitFor(t, 10*time.Second, "no pending entries", func() bool {
		p, err := rdb.XPending(ctx, stream, "g").Result()
		return err == nil && p.Count == 0
	})
	if n := tr.Stats().DroppedPending; n != 2 {
		t.Fatalf("DroppedPending = %d, want 2", n)
	}
}

// TestDeadLetterKeepsHeaders checks the dead-letter entry's fields.
func TestDeadLetterKeepsHeaders(t *testing.T) {
	t.Parallel()
	srv := testkit.Redis(t)
	tr := newTransport(t, srv)
	done := make(chan error, 1)
	startMember(t, tr, "g", func(m *member, c transport.Claim) {
		for batch := range c.Messages() {
			for _, msg := range batch {
				err := c.DeadLetter(c.Context(), msg, []transport.Header{{Key: "dlq_error", Value: []byte("boom")}})
				if err == nil {
					err = c.Commit(c.Context(), msg)
				}
				done <- err
			}
		}
	})
	acks := publish(t, tr, []*transport.Message{event("k", 0)})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	dlq := streamKey(testTopic, acks[0].Partition) + ".dlq"
	got, err := srv.Client(t).XRange(context.Background(), dlq, "-", "+").Result()
	if err != nil || len(got) != 1 {
		t.Fatalf("XRANGE %s: %v, %v", dlq, got, err)
	}
	want := map[string]any{
		"ce_id": "k-0", "ce_type": "test.Event", "content-type": "application/protobuf",
		"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"dlq_error":   "boom", "key": "k", "payload": "k/0",
	}
	for f, v := range want {
		if got[0].Values[f] != v {
			t.Fatalf("dead letter field %s = %v, want %v (all: %v)", f, got[0].Values[f], v, got[0].Values)
		}
	}
}

// TestTrimKeepsUnprocessedEntries: with a short retention, trimming removes
// only entries the group has processed; pending and undelivered ones stay
// and are consumed later. A group that does not advance is reported.
func TestTrimKeepsUnprocessedEntries(t *testing.T) {
	t.Parallel()
	srv := testkit.Redis(t)
	tr := newTransport(t, srv, func(c *Config) {
		c.Retention = time.Millisecond
		c.StallAfter = time.Millisecond
	})
	ctx := context.Background()
	acks := publish(t, tr, events("k", 100))
	stream := streamKey(testTopic, acks[0].Partition)
	// A group that has read nothing yet holds everything.
	rdb := srv.Client(t)
	if err := tr.createGroup(ctx, stream, "late"); err != nil {
		t.Fatal(err)
	}
	if err := tr.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.XLen(ctx, stream).Result(); n != 100 {
		t.Fatalf("stream has %d entries after trimming with a group that read nothing, want 100", n)
	}
	if err := rdb.XGroupDestroy(ctx, stream, "late").Err(); err != nil {
		t.Fatal(err)
	}
	// Group g commits the first 40 and reads the rest without committing.
	var handled atomic.Int64
	a := startMember(t, tr, "g", func(m *member, c transport.Claim) {
		for batch := range c.Messages() {
			for _, msg := range batch {
				if _, seq := seqOf(t, msg); seq < 40 {
					if err := c.Commit(c.Context(), msg); err != nil {
						return
					}
				}
				if handled.Add(1) == 70 {
					<-c.Context().Done() // stuck on message 70
				}
			}
		}
	})
	testkit.WaitFor(t, 10*time.Second, "70 messages handled", func() bool { return handled.Load() >= 70 })
	testkit.WaitFor(t, 10*time.Second, "60 pending", func() bool {
		p, err := rdb.XPending(ctx, stream, "g").Result()
		return err == nil && p.Count == 60
	})
	if err := tr.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	first, err := rdb.XRangeN(ctx, stream, "-", "+", 1).Result()
	if err != nil || len(first) != 1 || first[0].ID != acks[40].Position {
		t.Fatalf("after trimming the first entry is %v (%v), want the first unprocessed one %s", first, err, acks[40].Position)
	}
	if st := tr.Stats(); st.TrimmedEntries != 40 {
		t.Fatalf("TrimmedEntries = %d, want 40", st.TrimmedEntries)
	}
	// No progress since the last pass: reported as stalled.
	time.Sleep(5 * time.Millisecond)
	if err := tr.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if st := tr.Stats(); st.StalledGroups != 1 {
		t.Fatalf("StalledGroups = %d, want 1 (%+v)", st.StalledGroups, st.Groups)
	}
	// Another member gets the 60 unprocessed entries, in order.
	a.stop(t)
	b := startMember(t, tr, "g", nil)
	testkit.WaitFor(t, 20*time.Second, "the remaining 60 committed", func() bool { return b.committedCount() == 60 })
	b.mu.Lock()
	for i, msg := range b.committed {
		if _, seq := seqOf(t, msg); seq != 40+i {
			t.Fatalf("message %d is %d, want %d", i, seq, 40+i)
		}
	}
	b.mu.Unlock()
}

// TestRefusesEvictingRedis checks that a Redis that may evict keys is
// refused by publishers, subscribers and Check.
// beforeXPending runs f once, just before the first XPENDING of the
// client it hooks.
type beforeXPending struct {
	once sync.Once
	f    func()
}

func (h *beforeXPending) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *beforeXPending) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *beforeXPending) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "xpending" {
			h.once.Do(h.f)
		}
		return next(ctx, cmd)
	}
}

// A group that acknowledges its pending entries between the maintenance
// pass's XINFO GROUPS and its XPENDING still holds what it has not read:
// the stream is trimmed only up to its last delivered entry.
func TestTrimRacingAcknowledgements(t *testing.T) {
	t.Parallel()
	srv := testkit.Redis(t)
	tr := newTransport(t, srv, func(c *Config) { c.Retention = time.Millisecond })
	ctx := context.Background()
	acks := publish(t, tr, events("k", 10))
	stream := streamKey(testTopic, acks[0].Partition)
	rdb := srv.Client(t)
	if err := tr.createGroup(ctx, stream, "g"); err != nil {
		t.Fatal(err)
	}
	read, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c", Streams: []string{stream, ">"}, Count: 3}).Result()
	if err != nil || len(read) != 1 || len(read[0].Messages) != 3 {
		t.Fatalf("read 3 entries: %v, %v", read, err)
	}
	var ids []string
	for _, m := range read[0].Messages {
		ids = append(ids, m.ID)
	}
	tr.rdb.AddHook(&beforeXPending{f: func() {
		if err := rdb.XAck(ctx, stream, "g", ids...).Err(); err != nil {
			t.Error(err)
		}
	}})
	time.Sleep(5 * time.Millisecond) // every entry is past the retention
	if err := tr.Maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := rdb.XLen(ctx, stream).Result(); err != nil || n != 8 {
		t.Fatalf("stream has %d entries (%v), want 8: the last delivered and the 7 the group has not read", n, err)
	}
}

func TestRefusesEvictingRedis(t *testing.T) {
	t.Parallel()
	srv := testkit.Redis(t, "maxmemory-policy", "allkeys-lru")
	tr := newTransport(t, srv)
	if _, err := tr.NewPublisher("test", nil); !errors.Is(err, ErrEvictingServer) {
		t.Fatalf("NewPublisher = %v, want ErrEvictingServer", err)
	}
	if err := tr.Check(context.Background()); !errors.Is(err, ErrEvictingServer) {
		t.Fatalf("Check = %v, want ErrEvictingServer", err)
	}
	s, err := tr.NewSubscriber(transport.SubscriberConfig{Group: "g", Topics: []string{testTopic}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background(), func(transport.Claim) {}); !errors.Is(err, ErrEvictingServer) {
		t.Fatalf("Run = %v, want ErrEvictingServer", err)
	}
}

// TestGroupRecreatedAfterDataLoss: after Redis lost everything (FLUSHALL),
// members take their partitions again, recreate the group and consume what
// is written next.
func TestGroupRecreatedAfterDataLoss(t *testing.T) {
	t.Parallel()
	srv := testkit.Redis(t)
	tr := newTransport(t, srv)
	a := startMember(t, tr, "g", nil)
	publish(t, tr, []*transport.Message{event("k", 0)})
	testkit.WaitFor(t, 10*time.Second, "first message committed", func() bool { return a.committedCount() == 1 })
	if err := srv.Client(t).FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	publish(t, tr, []*transport.Message{event("k", 1)})
	testkit.WaitFor(t, 20*time.Second, "second message committed", func() bool { return a.committedCount() == 2 })
}

// A group destroyed while its stream keeps its entries is created again
// from the stream's beginning: what the member had handled comes again
// (the inbox absorbs it) and is acknowledged too, nothing left pending.
func TestGroupRecreatedWithEntriesKept(t *testing.T) {
	t.Parallel()
	srv := testkit.Redis(t)
	tr := newTransport(t, srv)
	a := startMember(t, tr, "g", nil)
	acks := publish(t, tr, []*transport.Message{event("k", 0)})
	testkit.WaitFor(t, 10*time.Second, "first message committed", func() bool { return a.committedCount() == 1 })
	ctx := context.Background()
	rdb := srv.Client(t)
	stream := streamKey(testTopic, acks[0].Partition)
	if err := rdb.XGroupDestroy(ctx, stream, "g").Err(); err != nil {
		t.Fatal(err)
	}
	publish(t, tr, []*transport.Message{event("k", 1)})
	testkit.WaitFor(t, 20*time.Second, "both messages committed after the group came back", func() bool {
		p, err := rdb.XPending(ctx, stream, "g").Result()
		return a.committedCount() == 3 && err == nil && p.Count == 0
	})
}

// BenchmarkPublish measures pipelined publishing to Redis with
// appendfsync always, acknowledged entries per second.
func BenchmarkPublish(b *testing.B) {
	srv := testkit.Redis(b)
	tr := newTransport(b, srv)
	p, err := tr.NewPublisher("bench", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	keys := keysOf(100)
	msgs := make([]*transport.Message, len(keys))
	for i, k := range keys {
		msgs[i] = event(k, 0)
		msgs[i].Value = make([]byte, 300)
	}
	var acked atomic.Int64
	ack := func(transport.Delivery) { acked.Add(1) }
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if err := p.Publish(context.Background(), msgs[i%len(msgs)], ack); err != nil {
			b.Fatal(err)
		}
	}
	if !p.Flush(time.Minute) {
		b.Fatal("flush")
	}
	b.ReportMetric(float64(acked.Load())/time.Since(start).Seconds(), "msgs/s")
}

// TestConsumesAfterRedisOutage: Redis is killed for longer than the lease
// and started again; the member takes its partitions back and consumes
// what is written afterwards, and what was pending before.
func TestConsumesAfterRedisOutage(t *testing.T) {
	t.Parallel()
	srv := testkit.Redis(t)
	tr := newTransport(t, srv)
	a := startMember(t, tr, "g", nil)
	publish(t, tr, []*transport.Message{event("k", 0)})
	testkit.WaitFor(t, 10*time.Second, "first message committed", func() bool { return a.committedCount() == 1 })
	srv.Stop()
	testkit.WaitFor(t, 20*time.Second, "the member giving up leases it cannot confirm", func() bool { return len(a.owned()) == 0 })
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	publish(t, tr, []*transport.Message{event("k", 1)})
	testkit.WaitFor(t, 20*time.Second, "second message committed", func() bool { return a.committedCount() == 2 })
}

// The partition count routes every key on Redis: the first process to
// ensure a topic records it, and one configured with another count is
// refused rather than splitting aggregates across streams.
func TestPartitionCountIsRecorded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := testkit.Redis(t)
	partitions := func(n int) func(*Config) { return func(c *Config) { c.Partitions = n } }
	four := newTransport(t, srv, partitions(4))
	if err := four.EnsureTopics(ctx, testTopic, testTopic+".other"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name       string
		partitions int
		topics     []string
		wantErr    error
	}{
		{"same count", 4, []string{testTopic}, nil},
		{"more", 8, []string{testTopic}, ErrPartitionsChanged},
		{"fewer, on the second topic", 2, []string{"switchyard.new", testTopic + ".other"}, ErrPartitionsChanged},
		{"a topic not recorded yet", 8, []string{"switchyard.fresh"}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := newTransport(t, srv, partitions(c.partitions)).EnsureTopics(ctx, c.topics...)
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("EnsureTopics with %d partitions = %v, want %v", c.partitions, err, c.wantErr)
			}
		})
	}
	rdb := srv.Client(t)
	if n, err := rdb.Get(ctx, testTopic+":partitions").Result(); err != nil || n != "4" {
		t.Fatalf("recorded count %q (%v), want the first process's 4", n, err)
	}
	// A refused call writes nothing, not even for the topics it named
	// that had no count yet.
	if n, err := rdb.Exists(ctx, "switchyard.new:partitions").Result(); err != nil || n != 0 {
		t.Fatalf("a refused EnsureTopics recorded its count for another topic (%d, %v)", n, err)
	}
	// A publisher checks before its first entry to a topic: a process
	// with another count writes no entry where nobody reads.
	pub, err := newTransport(t, srv, partitions(8)).NewPublisher("wrong", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := pub.Publish(ctx, event("k", 1), nil); !errors.Is(err, ErrPartitionsChanged) {
		t.Fatalf("Publish with 8 partitions to a topic recorded with 4 = %v, want ErrPartitionsChanged", err)
	}
	if keys, err := rdb.Keys(ctx, testTopic+":[0-9]*").Result(); err != nil || len(keys) != 0 {
		t.Fatalf("streams %v (%v) after a refused publish, want none", keys, err)
	}
}
