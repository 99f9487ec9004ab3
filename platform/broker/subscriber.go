package broker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/switchyard/switchyard/platform/transport"
)

// Bounds of a claim's backlog: the polling goroutine never blocks on a slow
// partition; it pauses fetching for that partition once this many messages
// wait, and resumes when the backlog is drained below the low mark.
const (
	backlogHigh = 2000
	backlogLow  = 500
)

// subscriber is the Kafka [transport.Subscriber]: a librdkafka group member
// whose offsets are stored only by Commit (enable.auto.offset.store=false)
// and committed in the background and on leaving.
type subscriber struct {
	t   *Transport
	cfg transport.SubscriberConfig

	dlqMu sync.Mutex
	dlq   transport.Publisher

	pauses atomic.Int64 // partitions paused for a full backlog (tests watch it)
}

func (s *subscriber) Run(ctx context.Context, consume func(transport.Claim)) error {
	if err := s.t.EnsureTopics(ctx, s.cfg.Topics...); err != nil {
		return err
	}
	kc, err := NewConsumer(s.t.cfg, s.cfg.Group, "switchyard-consumer-"+s.cfg.Group, s.cfg.Logger)
	if err != nil {
		return err
	}
	m := &members{s: s, kc: kc, ctx: ctx, consume: consume, claims: map[string]*claim{}}
	defer func() {
		m.revoke(nil)
		m.wg.Wait()
		kc.Close() // commits the stored offsets and leaves the group
		s.dlqMu.Lock()
		if s.dlq != nil {
			s.dlq.Close()
		}
		s.dlqMu.Unlock()
	}()
	rebalance := func(_ *kafka.Consumer, ev kafka.Event) error {
		switch e := ev.(type) {
		case kafka.AssignedPartitions:
			s.cfg.Logger.Info("partitions assigned", "partitions", partitionKeys(e.Partitions))
			m.assign(e.Partitions)
		case kafka.RevokedPartitions:
			// Work on revoked partitions ends (and stores its offsets)
			// before they go; the client then unassigns them.
			s.cfg.Logger.Info("partitions revoked", "partitions", partitionKeys(e.Partitions))
			m.revoke(e.Partitions)
			s.cfg.Logger.Info("revoked partitions' work ended", "partitions", len(e.Partitions))
		}
		return nil
	}
	if err := kc.SubscribeTopics(s.cfg.Topics, rebalance); err != nil {
		return fmt.Errorf("subscribe to %v: %w", s.cfg.Topics, err)
	}
	for ctx.Err() == nil {
		ev := kc.Poll(100)
		switch e := ev.(type) {
		case *kafka.Message:
			if e.TopicPartition.Error != nil {
				s.cfg.Logger.Warn("consume", "error", e.TopicPartition.Error)
				continue
			}
			m.dispatch(e)
		case kafka.Error:
			if e.IsFatal() {
				return fmt.Errorf("kafka consumer: %w", e)
			}
			s.cfg.Logger.Warn("kafka consumer", "error", e)
		}
	}
	return nil
}

// members tracks this member's claims. Only the polling goroutine (including
// the rebalance callback, which runs inside Poll) touches claims.
type members struct {
	s       *subscriber
	kc      *kafka.Consumer
	ctx     context.Context
	consume func(transport.Claim)
	claims  map[string]*claim // by partitionKey
	wg      sync.WaitGroup
}

func partitionKey(tp kafka.TopicPartition) string {
	return fmt.Sprintf("%s/%d", *tp.Topic, tp.Partition)
}

// partitionKeys names parts for a log line.
func partitionKeys(parts []kafka.TopicPartition) []string {
	keys := make([]string, len(parts))
	for i, tp := range parts {
		keys[i] = partitionKey(tp)
	}
	return keys
}

func (m *members) assign(parts []kafka.TopicPartition) {
	// librdkafka keeps a partition's pause across losing and regaining it
	// (a session timeout, for one): a claim starts unpaused, so must the
	// partition, or nothing would ever be fetched for it again.
	if err := m.kc.Resume(parts); err != nil {
		m.s.cfg.Logger.Warn("resume assigned partitions", "error", err)
	}
	for _, tp := range parts {
		key := kafka.TopicPartition{Topic: new(string), Partition: tp.Partition}
		*key.Topic = *tp.Topic
		c := &claim{
			m:      m,
			tp:     key,
			out:    make(chan []*transport.Message),
			wake:   make(chan struct{}, 1),
			closed: make(chan struct{}),
			done:   make(chan struct{}),
			lag:    -1,
		}
		c.ctx, c.cancel = context.WithCancel(m.ctx)
		if m.claims[partitionKey(tp)] != nil {
			m.revoke([]kafka.TopicPartition{tp}) // assigned twice: start afresh
		}
		m.claims[partitionKey(tp)] = c
		m.wg.Add(2)
		go func() { defer m.wg.Done(); c.feed() }()
		go func() {
			defer m.wg.Done()
			defer close(c.done)
			m.consume(c)
		}()
	}
}

// revoke ends the claims of parts (all when nil): their Messages channels
// close at once, and all of them together get one RevokeTimeout to finish
// their current batch before their contexts are cancelled.
func (m *members) revoke(parts []kafka.TopicPartition) {
	deadline := time.NewTimer(m.s.cfg.RevokeTimeout)
	defer deadline.Stop()
	m.end(m.take(parts), deadline.C)
}

// take removes the claims of parts (all when nil) from the member.
func (m *members) take(parts []kafka.TopicPartition) []*claim {
	var ending []*claim
	if parts == nil {
		for k, c := range m.claims {
			ending = append(ending, c)
			delete(m.claims, k)
		}
	} else {
		for _, tp := range parts {
			k := partitionKey(tp)
			if c := m.claims[k]; c != nil {
				ending = append(ending, c)
				delete(m.claims, k)
			}
		}
	}
	return ending
}

// end closes the claims' Messages channels and waits until each consume
// call has returned; when deadline fires, every claim still working is
// cancelled at once.
func (m *members) end(ending []*claim, deadline <-chan time.Time) {
	for _, c := range ending {
		close(c.closed)
	}
	for _, c := range ending {
		select {
		case <-c.done:
		case <-deadline:
			// Out of time: cancel every claim still working.
			for _, c := range ending {
				c.cancel()
			}
			<-c.done
		}
	}
	for _, c := range ending {
		c.cancel()
	}
}

func (m *members) dispatch(km *kafka.Message) {
	c := m.claims[partitionKey(km.TopicPartition)]
	if c == nil {
		return // not (or no longer) ours: its offset was not stored
	}
	c.push(FromKafka(km))
}

// claim is one assigned partition. The polling goroutine appends to its
// backlog; feed hands the backlog to the consumer in batches.
type claim struct {
	m      *members
	tp     kafka.TopicPartition
	ctx    context.Context
	cancel context.CancelFunc
	out    chan []*transport.Message
	wake   chan struct{} // a message was added to the backlog
	closed chan struct{} // the partition was taken away
	done   chan struct{} // consume returned

	mu      sync.Mutex
	backlog []*transport.Message
	paused  bool
	lag     int64

	buffered atomic.Int64 // the batch on offer plus the backlog, as feed last saw them
}

func (c *claim) push(msg *transport.Message) {
	c.mu.Lock()
	c.backlog = append(c.backlog, msg)
	if len(c.backlog) >= backlogHigh && !c.paused {
		if err := c.m.kc.Pause([]kafka.TopicPartition{c.tp}); err == nil {
			c.paused = true
			c.m.s.pauses.Add(1)
		}
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// take removes up to max messages from the backlog, resuming the partition
// when the backlog has drained, and returns how many are left.
func (c *claim) take(max int) (batch []*transport.Message, left int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := min(len(c.backlog), max)
	if n == 0 {
		return nil, len(c.backlog)
	}
	batch = make([]*transport.Message, n)
	copy(batch, c.backlog)
	c.backlog = c.backlog[n:]
	if len(c.backlog) == 0 {
		c.backlog = nil // let the drained array go
	}
	if c.paused && len(c.backlog) <= backlogLow {
		if err := c.m.kc.Resume([]kafka.TopicPartition{c.tp}); err == nil {
			c.paused = false
		}
	}
	return batch, len(c.backlog)
}

// feed hands the backlog to the consumer. The batch on offer keeps growing
// (up to MaxBatch) with what arrives while the consumer is busy, so that a
// batch is everything that has arrived when the consumer asks.
func (c *claim) feed() {
	defer close(c.out)
	defer c.buffered.Store(0) // what was on offer goes to the next owner
	var batch []*transport.Message
	for {
		more, left := c.take(c.m.s.cfg.MaxBatch - len(batch))
		batch = append(batch, more...)
		// Counted from the same take: what a push adds after it is counted
		// once the next take has moved it into the batch.
		c.buffered.Store(int64(len(batch) + left))
		if len(batch) == 0 {
			select {
			case <-c.wake:
				continue
			case <-c.closed:
				return
			case <-c.ctx.Done():
				return
			}
		}
		select {
		case c.out <- batch:
			batch = nil
		case <-c.wake: // more arrived: add it to the batch on offer
		case <-c.closed:
			return
		case <-c.ctx.Done():
			return
		}
	}
}

func (c *claim) Topic() string                         { return *c.tp.Topic }
func (c *claim) Partition() int32                      { return c.tp.Partition }
func (c *claim) Epoch() int64                          { return 0 }
func (c *claim) Messages() <-chan []*transport.Message { return c.out }
func (c *claim) Context() context.Context              { return c.ctx }
func (c *claim) Buffered() int64                       { return c.buffered.Load() }

// Lag is the partition's high watermark minus the next offset to poll,
// from the client's cached watermark: it comes with every fetch response,
// so while the partition is fetched it is at most a fetch (100 ms) behind
// the broker, and while it is paused for a full backlog it is as of the
// pause. Asking the broker instead costs a request per partition on every
// /metrics scrape, which took 160-350 ms a scrape under load.
func (c *claim) Lag() int64 {
	_, high, err := c.m.kc.GetWatermarkOffsets(*c.tp.Topic, c.tp.Partition)
	if err != nil || high < 0 {
		return -1
	}
	pos, err := c.m.kc.Position([]kafka.TopicPartition{c.tp})
	if err != nil || len(pos) == 0 || pos[0].Offset < 0 {
		return -1
	}
	return max(0, high-int64(pos[0].Offset))
}

// Commit stores the offset after the last of msgs; the client commits stored
// offsets every second and when the partition is revoked or the member
// leaves. A revoked partition's store fails: its next owner gets the
// messages again and the consumer's inbox absorbs them.
func (c *claim) Commit(_ context.Context, msgs ...*transport.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	last := msgs[len(msgs)-1]
	tp := kafka.TopicPartition{Topic: c.tp.Topic, Partition: c.tp.Partition, Offset: kafka.Offset(last.Offset + 1)}
	if _, err := c.m.kc.StoreOffsets([]kafka.TopicPartition{tp}); err != nil {
		select {
		case <-c.closed:
			return fmt.Errorf("store offset of %s/%d: %w: %w", *c.tp.Topic, c.tp.Partition, transport.ErrFenced, err)
		default:
		}
		return fmt.Errorf("store offset of %s/%d: %w", *c.tp.Topic, c.tp.Partition, err)
	}
	return nil
}

// DeadLetter produces m to "<topic>.dlq" and waits for the acknowledgement.
func (c *claim) DeadLetter(ctx context.Context, m *transport.Message, extra []transport.Header) error {
	s := c.m.s
	s.dlqMu.Lock()
	defer s.dlqMu.Unlock()
	if s.dlq == nil {
		p, err := s.t.NewPublisher("switchyard-dlq-"+s.cfg.Group, s.cfg.Logger)
		if err != nil {
			return err
		}
		s.dlq = p
	}
	out := &transport.Message{
		Topic:   *c.tp.Topic + ".dlq",
		Key:     m.Key,
		Value:   m.Value,
		Headers: append(append([]transport.Header(nil), m.Headers...), extra...),
	}
	if err := publishSync(ctx, s.dlq, out); err != nil {
		// A fatal producer error poisons the producer: start afresh.
		s.dlq.Close()
		s.dlq = nil
		return fmt.Errorf("dead-letter to %s: %w", out.Topic, err)
	}
	return nil
}
