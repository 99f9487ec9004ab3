package relay

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
)

// txn is one decoded transaction on its way to Kafka.
type txn struct {
	end       pglogrepl.LSN
	pending   int
	committed bool
	created   time.Time // of its first event
}

// lsnTracker computes the LSN that is safe to confirm: the end of the newest
// transaction such that it and every transaction before it are committed and
// fully acknowledged by Kafka.
type lsnTracker struct {
	mu           sync.Mutex
	queue        []*txn
	safe         pglogrepl.LSN
	pendingSince *atomic.Int64 // the relay's oldest-unacknowledged timestamp
}

func (t *lsnTracker) begin() *txn {
	t.mu.Lock()
	defer t.mu.Unlock()
	x := &txn{}
	t.queue = append(t.queue, x)
	return x
}

func (t *lsnTracker) add(x *txn, created time.Time) {
	t.mu.Lock()
	if x.created.IsZero() {
		x.created = created
	}
	x.pending++
	t.updatePending()
	t.mu.Unlock()
}

// updatePending publishes the creation time of the oldest transaction whose
// events are not all acknowledged.
func (t *lsnTracker) updatePending() {
	for _, x := range t.queue {
		if x.pending > 0 && !x.created.IsZero() {
			t.pendingSince.Store(x.created.UnixNano())
			return
		}
	}
	t.pendingSince.Store(0)
}

func (t *lsnTracker) ack(x *txn) {
	t.mu.Lock()
	x.pending--
	t.advance()
	t.mu.Unlock()
}

func (t *lsnTracker) commit(x *txn, end pglogrepl.LSN) {
	t.mu.Lock()
	x.end, x.committed = end, true
	t.advance()
	t.mu.Unlock()
}

// idleAt moves the safe point to the server's WAL end when nothing is in
// flight, so the slot does not hold back WAL written by other tables, and
// reports whether nothing was.
func (t *lsnTracker) idleAt(walEnd pglogrepl.LSN) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.queue) != 0 {
		return false
	}
	if walEnd > t.safe {
		t.safe = walEnd
	}
	return true
}

func (t *lsnTracker) advance() {
	for len(t.queue) > 0 && t.queue[0].committed && t.queue[0].pending == 0 {
		if t.queue[0].end > t.safe {
			t.safe = t.queue[0].end
		}
		t.queue[0] = nil
		t.queue = t.queue[1:]
	}
	t.updatePending()
}

func (t *lsnTracker) confirmed() pglogrepl.LSN {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.safe
}
