package redisstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchyard/switchyard/platform/backoff"
	"github.com/switchyard/switchyard/platform/transport"
)

const (
	// blockFor is how long a reader waits for new entries before it reads
	// (and so checks its lease) again.
	blockFor = time.Second
	// lagEvery is how often a claim's lag is refreshed.
	lagEvery = time.Second
	// ackChunk bounds the ids of one XACK (Lua's unpack has a stack limit).
	ackChunk = 1000
)

// claim is one partition owned by one member.
type claim struct {
	s         *subscriber
	topic     string
	partition int32
	stream    string
	lease     string
	token     string
	epoch     int64

	msgs   chan []*transport.Message
	ctx    context.Context
	cancel context.CancelFunc

	stop      chan struct{} // asks the reader to close msgs
	stopOnce  sync.Once
	consumed  chan struct{} // closed when consume returned
	releasing atomic.Bool
	lost      atomic.Bool
	lag       atomic.Int64
	buffered  atomic.Int64 // the batch on offer

	validUntil time.Time // the lease is surely ours until then (manager only)
	lagAt      time.Time // when lag was last read (reader only)
}

var _ transport.Claim = (*claim)(nil)

func (c *claim) Topic() string                         { return c.topic }
func (c *claim) Partition() int32                      { return c.partition }
func (c *claim) Epoch() int64                          { return c.epoch }
func (c *claim) Messages() <-chan []*transport.Message { return c.msgs }
func (c *claim) Context() context.Context              { return c.ctx }
func (c *claim) Lag() int64                            { return c.lag.Load() }
func (c *claim) Buffered() int64                       { return c.buffered.Load() }

func (c *claim) stopReading() { c.stopOnce.Do(func() { close(c.stop) }) }

// lose ends the claim at once: another member may own the partition now.
func (c *claim) lose(why string) {
	if c.lost.Swap(true) {
		return
	}
	c.s.log.Warn("partition ownership lost", "stream", c.stream, "epoch", c.epoch, "reason", why)
	c.cancel()
	c.stopReading()
	go func() {
		<-c.consumed
		c.s.forget(c)
	}()
}

// Commit acknowledges msgs if this claim still holds the partition's lease.
func (c *claim) Commit(ctx context.Context, msgs ...*transport.Message) error {
	ids := make([]string, 0, len(msgs))
	for _, m := range msgs {
		ids = append(ids, m.Position)
	}
	return c.ack(ctx, ids)
}

func (c *claim) ack(ctx context.Context, ids []string) error {
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), ackChunk)]
		ids = ids[len(chunk):]
		args := make([]any, 0, len(chunk)+2)
		args = append(args, c.token, c.s.cfg.Group)
		for _, id := range chunk {
			args = append(args, id)
		}
		n, err := ackScript.Run(ctx, c.s.t.rdb, []string{c.lease, c.stream}, args...).Int64()
		if err != nil {
			return fmt.Errorf("XACK %s: %w", c.stream, err)
		}
		if n < 0 {
			return fmt.Errorf("XACK %s (epoch %d): %w", c.stream, c.epoch, transport.ErrFenced)
		}
	}
	return nil
}

// DeadLetter adds m, with extra headers, to the stream "<stream>.dlq".
func (c *claim) DeadLetter(ctx context.Context, m *transport.Message, extra []transport.Header) error {
	values, err := entryFields(m, extra)
	if err != nil {
		return fmt.Errorf("dead-letter %s: %w", m.Position, err)
	}
	dlq := c.stream + ".dlq"
	if err := c.s.t.rdb.XAdd(ctx, &redis.XAddArgs{Stream: dlq, Values: values}).Err(); err != nil {
		return fmt.Errorf("XADD %s: %w", dlq, err)
	}
	return nil
}

// entry is one stream entry as the read script returns it; fields is nil
// for a pending entry whose message was trimmed away.
type entry struct {
	id     string
	fields []any
}

// read feeds msgs: first the partition's pending entries (a former owner's
// uncommitted work), then new ones, until the claim is stopped or lost.
func (c *claim) read() {
	defer close(c.msgs)
	defer c.buffered.Store(0) // what was on offer goes to the next owner
	log := c.s.log.With("stream", c.stream)
	history := true // reading the pending entries
	after := "0"    // the history read's cursor
	last := ""      // the last entry handed to consume
	retry := backoff.New(100*time.Millisecond, 5*time.Second)
	for !c.stopped() {
		c.refreshLag()
		from := ">"
		if history {
			from = after
		}
		entries, lastID, err := c.fetch(from)
		switch {
		case errors.Is(err, transport.ErrFenced):
			c.lose("lease lost before a read")
			return
		case isNoGroup(err):
			// Redis lost the group (restart without data, flush): recreate
			// it from the stream's beginning and start over, handing out
			// again what this claim handed out before, which the new group
			// delivers again and must see acknowledged.
			log.Warn("consumer group missing; creating it again", "err", err)
			ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
			err = c.s.t.createGroup(ctx, c.stream, c.s.cfg.Group)
			cancel()
			history, after, last = true, "0", ""
			if err == nil {
				continue
			}
		}
		if err != nil {
			// The reply may have been lost after Redis moved entries into
			// our pending list: read the pending entries again (skipping
			// those already handed out) before new ones.
			log.Warn("redis read failed; retrying", "err", err)
			history, after = true, "0"
			if !c.sleep(retry.Delay()) {
				return
			}
			continue
		}
		retry.Reset()
		if len(entries) == 0 {
			if history {
				history = false
				continue
			}
			if !c.waitNewer(lastID) {
				return
			}
			continue
		}
		deliveries := map[string]int64{}
		if history {
			after = entries[len(entries)-1].id
			deliveries = c.deliveries(entries)
		}
		batch := make([]*transport.Message, 0, len(entries))
		for _, e := range entries {
			if last != "" && compareIDs(e.id, last) <= 0 {
				continue // handed out earlier in this claim; still being handled
			}
			if e.fields == nil {
				c.dropTrimmed(e.id)
				continue
			}
			m := c.message(e)
			if n, ok := deliveries[e.id]; ok {
				m.Deliveries = n
			}
			batch = append(batch, m)
		}
		if len(batch) == 0 {
			continue
		}
		batch, err = c.offer(batch, history)
		if errors.Is(err, transport.ErrFenced) {
			c.lose("lease lost before a read")
			return
		}
		if batch == nil {
			return // stopped
		}
		last = batch[len(batch)-1].Position
		if err != nil {
			// A top-up's reply may have been lost after Redis moved entries
			// into our pending list: read the pending entries again.
			log.Warn("redis read failed; retrying", "err", err)
			history, after = true, "0"
		}
	}
}

// offerEvery is how often a batch waiting for the consumer is topped up
// with entries that arrived meanwhile.
const offerEvery = 20 * time.Millisecond

// offer hands batch to the consumer and returns it once taken (nil if the
// claim stopped first). While the consumer is busy, new entries are read
// and added to the batch on offer (up to MaxBatch), so that a batch is what
// has arrived when the consumer asks, as on Kafka. Entries of the pending
// history are offered as they are.
func (c *claim) offer(batch []*transport.Message, history bool) ([]*transport.Message, error) {
	tick := time.NewTicker(offerEvery)
	defer tick.Stop()
	var readErr error
	for {
		c.buffered.Store(int64(len(batch)))
		select {
		case c.msgs <- batch:
			c.buffered.Store(0)
			return batch, readErr
		case <-c.stop:
			return nil, nil
		case <-c.ctx.Done():
			return nil, nil
		case <-tick.C:
			c.refreshLag()
			if history || readErr != nil || len(batch) >= c.s.cfg.MaxBatch {
				continue
			}
			entries, _, err := c.fetchN(">", c.s.cfg.MaxBatch-len(batch))
			if errors.Is(err, transport.ErrFenced) {
				return nil, err
			}
			if err != nil {
				readErr = err
				continue
			}
			for _, e := range entries {
				if e.fields != nil { // new entries are never trimmed ones
					batch = append(batch, c.message(e))
				}
			}
			if len(entries) > 0 {
				c.updateLag()
			}
		}
	}
}

func (c *claim) stopped() bool {
	select {
	case <-c.stop:
		return true
	case <-c.ctx.Done():
		return true
	default:
		return false
	}
}

// sleep waits d unless the claim stops first; it reports whether it slept.
func (c *claim) sleep(d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-c.stop:
		return false
	case <-c.ctx.Done():
		return false
	}
}

// fetch runs the fenced read from id ("0"-style for pending entries, ">"
// for new ones).
func (c *claim) fetch(from string) ([]entry, string, error) {
	return c.fetchN(from, c.s.cfg.MaxBatch)
}

// fetchN is fetch of at most n entries.
func (c *claim) fetchN(from string, n int) ([]entry, string, error) {
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer cancel()
	res, err := readScript.Run(ctx, c.s.t.rdb, []string{c.lease, c.stream},
		c.token, c.s.cfg.Group, consumerName(c.partition), n, from).Slice()
	if err != nil {
		if isFenced(err) {
			return nil, "", fmt.Errorf("read %s: %w", c.stream, transport.ErrFenced)
		}
		return nil, "", fmt.Errorf("read %s: %w", c.stream, err)
	}
	if len(res) != 2 {
		return nil, "", fmt.Errorf("read %s: unexpected reply %v", c.stream, res)
	}
	raw, _ := res[0].([]any)
	lastID, _ := res[1].(string)
	entries := make([]entry, 0, len(raw))
	for _, r := range raw {
		pair, ok := r.([]any)
		if !ok || len(pair) != 2 {
			return nil, "", fmt.Errorf("read %s: unexpected entry %v", c.stream, r)
		}
		id, _ := pair[0].(string)
		fields, _ := pair[1].([]any)
		entries = append(entries, entry{id: id, fields: fields})
	}
	return entries, lastID, nil
}

func isFenced(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && len(rerr.Error()) >= 6 && rerr.Error()[:6] == "FENCED"
}

// waitNewer waits until the stream has an entry after id, for at most
// blockFor, unless the claim stops first (it then reports false). The
// XREAD runs on its own goroutine so a revocation need not wait for it.
func (c *claim) waitNewer(id string) bool {
	woke := make(chan struct{})
	go func() {
		defer close(woke)
		ctx, cancel := context.WithTimeout(c.ctx, blockFor+5*time.Second)
		defer cancel()
		err := c.s.t.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{c.stream, id}, Count: 1, Block: blockFor}).Err()
		if err != nil && !errors.Is(err, redis.Nil) && c.ctx.Err() == nil {
			// Redis is unreachable: do not spin; the next read reports it.
			c.sleep(blockFor / 4)
		}
	}()
	select {
	case <-woke:
		return true
	case <-c.stop:
		return false
	case <-c.ctx.Done():
		return false
	}
}

// deliveries returns how often each of entries was delivered (XPENDING).
func (c *claim) deliveries(entries []entry) map[string]int64 {
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	pending, err := c.s.t.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
		Stream: c.stream, Group: c.s.cfg.Group, Consumer: consumerName(c.partition),
		Start: entries[0].id, End: entries[len(entries)-1].id, Count: int64(len(entries)),
	}).Result()
	out := map[string]int64{}
	if err != nil {
		c.s.log.Warn("cannot read delivery counts", "stream", c.stream, "err", err)
		return out
	}
	for _, p := range pending {
		out[p.ID] = p.RetryCount
	}
	return out
}

// dropTrimmed acknowledges a pending entry whose message is gone (trimmed
// or deleted), so it is not read again, and counts it.
func (c *claim) dropTrimmed(id string) {
	c.s.log.Warn("pending entry's message no longer exists (trimmed); acknowledging it", "stream", c.stream, "id", id)
	c.s.t.countDropped()
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	if err := c.ack(ctx, []string{id}); err != nil {
		c.s.log.Warn("cannot acknowledge trimmed entry", "stream", c.stream, "id", id, "err", err)
	}
}

// message decodes an entry: every field but key and payload is a header.
func (c *claim) message(e entry) *transport.Message {
	m := &transport.Message{Topic: c.topic, Partition: c.partition, Offset: -1, Position: e.id, Deliveries: 1}
	for i := 0; i+1 < len(e.fields); i += 2 {
		name, _ := e.fields[i].(string)
		value, _ := e.fields[i+1].(string)
		switch name {
		case fieldKey:
			m.Key = []byte(value)
		case fieldPayload:
			m.Value = []byte(value)
		default:
			m.Headers = append(m.Headers, transport.Header{Key: name, Value: []byte(value)})
		}
	}
	return m
}

// refreshLag reads the lag again if it is older than lagEvery.
func (c *claim) refreshLag() {
	if time.Since(c.lagAt) >= lagEvery {
		c.updateLag()
	}
}

// updateLag reads the group's lag on the partition: entries not yet
// delivered to it (Redis 7.0's XINFO GROUPS lag; -1 when Redis cannot tell).
func (c *claim) updateLag() {
	c.lagAt = time.Now()
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	groups, err := c.s.t.rdb.XInfoGroups(ctx, c.stream).Result()
	if err != nil {
		return
	}
	for _, g := range groups {
		if g.Name == c.s.cfg.Group {
			c.lag.Store(g.Lag)
		}
	}
}
