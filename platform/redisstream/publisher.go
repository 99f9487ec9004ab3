package redisstream

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchyard/switchyard/platform/transport"
)

const (
	// publishQueue bounds the messages queued but not yet sent, per lane.
	publishQueue = 5000
	// maxBatch bounds one pipeline of XADDs.
	maxBatch = 1000
	// lanes is how many pipelines run at once. A partition always uses the
	// same lane, so its entries keep their order; several lanes let Redis
	// write (and fsync) several clients' batches in one event-loop turn.
	lanes = 4
	// publishTimeout bounds one pipeline round trip.
	publishTimeout = 30 * time.Second
)

// publisher pipelines XADDs on a few lanes, each one goroutine sending one
// pipeline at a time: acknowledgements of a partition (and so of a key) come
// in the order of Publish calls. A lane sends what is queued as soon as its
// previous pipeline is answered, so batches grow with the load and nothing
// waits for a timer.
type publisher struct {
	t    *Transport
	name string
	log  *slog.Logger

	lanes   []chan *pubItem
	pending atomic.Int64 // queued or sent, not yet acknowledged

	failed   chan error // receives the first fatal error
	failOnce sync.Once
	failErr  atomic.Pointer[error]

	stop      chan struct{}
	stopOnce  sync.Once
	done      sync.WaitGroup
	closeOnce sync.Once
}

type pubItem struct {
	stream    string
	partition int32
	values    []any
	ack       func(transport.Delivery)
}

// NewPublisher returns a publisher after checking that Redis cannot evict
// its streams. clientID names it in logs.
func (t *Transport) NewPublisher(clientID string, logger *slog.Logger) (transport.Publisher, error) {
	if logger == nil {
		logger = t.log
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := t.checkServer(ctx); err != nil {
		return nil, err
	}
	p := &publisher{
		t:      t,
		name:   clientID,
		log:    logger.With("publisher", clientID),
		lanes:  make([]chan *pubItem, lanes),
		failed: make(chan error, 1),
		stop:   make(chan struct{}),
	}
	for i := range p.lanes {
		p.lanes[i] = make(chan *pubItem, publishQueue)
		p.done.Add(1)
		go p.run(p.lanes[i])
	}
	return p, nil
}

// Publish queues m for the next pipeline.
func (p *publisher) Publish(ctx context.Context, m *transport.Message, ack func(transport.Delivery)) error {
	if err := p.err(); err != nil {
		return err
	}
	values, err := entryFields(m, nil)
	if err != nil {
		return fmt.Errorf("publish to %s: %w", m.Topic, err)
	}
	if !p.t.counts(m.Topic) {
		if err := p.t.EnsureTopics(ctx, m.Topic); err != nil {
			return fmt.Errorf("publish to %s: %w", m.Topic, err)
		}
	}
	partition := transport.Partition(m.Key, p.t.cfg.Partitions)
	it := &pubItem{stream: streamKey(m.Topic, partition), partition: partition, values: values, ack: ack}
	p.pending.Add(1)
	select {
	case p.lanes[int(partition)%len(p.lanes)] <- it:
		return nil
	case <-p.stop:
		p.pending.Add(-1)
		if err := p.err(); err != nil {
			return err
		}
		return fmt.Errorf("publish to %s: publisher closed", m.Topic)
	case <-ctx.Done():
		p.pending.Add(-1)
		return ctx.Err()
	}
}

// Failed delivers the first fatal error.
func (p *publisher) Failed() <-chan error { return p.failed }

// Flush waits until everything queued is acknowledged, the publisher failed,
// or timeout passed.
func (p *publisher) Flush(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for p.pending.Load() > 0 {
		if p.err() != nil || time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// Close stops the publisher; what is still queued is dropped.
func (p *publisher) Close() {
	p.closeOnce.Do(func() {
		p.stopOnce.Do(func() { close(p.stop) })
		p.done.Wait()
	})
}

func (p *publisher) err() error {
	if e := p.failErr.Load(); e != nil {
		return *e
	}
	return nil
}

// fail records the first fatal error and stops the publisher.
func (p *publisher) fail(err error) {
	p.failOnce.Do(func() {
		p.failErr.Store(&err)
		p.failed <- err
		p.log.Error("redis publisher failed", "err", err)
		p.stopOnce.Do(func() { close(p.stop) })
	})
}

// run sends one lane's queue: it waits for a first message, takes
// whatever else is queued (up to maxBatch) and sends it as one
// transaction (see send).
func (p *publisher) run(queue chan *pubItem) {
	defer p.done.Done()
	batch := make([]*pubItem, 0, maxBatch)
	for {
		batch = batch[:0]
		select {
		case it := <-queue:
			batch = append(batch, it)
		case <-p.stop:
			return
		}
	collect:
		for len(batch) < maxBatch {
			select {
			case it := <-queue:
				batch = append(batch, it)
			default:
				break collect
			}
		}
		if !p.send(batch) {
			return
		}
	}
}

// send writes batch in one MULTI/EXEC transaction and acknowledges every
// entry, in order; it reports false after a fatal error. A transaction,
// not a plain pipeline: Redis runs a pipeline's commands one by one, so
// one refused (out of memory, say) could be followed by a later entry of
// the same stream stored, and the relay's resend would put that entry
// before its predecessor. A command refused while the transaction is
// queued aborts all of it. (An error at EXEC, such as WRONGTYPE, does not
// roll back the others, but it fails every XADD to that stream alike.)
// Nothing is acknowledged after any error; the relay sends it all again.
func (p *publisher) send(batch []*pubItem) bool {
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	cmds := make([]*redis.StringCmd, len(batch))
	_, err := p.t.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, it := range batch {
			cmds[i] = pipe.XAdd(ctx, &redis.XAddArgs{Stream: it.stream, Values: it.values})
		}
		return nil
	})
	if err != nil {
		p.fail(fmt.Errorf("XADD %d entries: %w", len(batch), err))
		return false
	}
	for i, cmd := range cmds {
		if ack := batch[i].ack; ack != nil {
			ack(transport.Delivery{Partition: batch[i].partition, Position: cmd.Val()})
		}
		p.pending.Add(-1)
	}
	return true
}
