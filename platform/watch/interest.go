package watch

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/switchyard/switchyard/platform/migrate"
)

// A NOTIFY is not free: PostgreSQL serialises the commits of every
// notifying transaction in the cluster on one lock, held through the
// commit's WAL flush, which undoes group commit (8 writers on a durable
// cluster committed half as many transactions with a pg_notify in each).
// So writers announce after their commits, and only keys some hub follows:
// each hub records the keys it follows in watch_interest, and the
// announcement is a statement that finds no row when nobody follows the
// key.
//
// That cannot miss a stream. The announcement runs after the change
// committed, and a stream reads only after its key's row committed: if
// the announcement does not see the row, the row committed after the
// change, so the stream's first read sees the change. If it sees the row
// while the hub is not listening (starting, or reconnecting), or the row
// has gone without the hub knowing (a crash empties the table), the
// notification is lost; but the hub rewrites every followed key once it
// listens again (Hub.listen, requeue) and wakes their streams after that
// write, so they read again after the change.
const interestSchema = `
CREATE UNLOGGED TABLE IF NOT EXISTS watch_interest (
	channel    text NOT NULL,
	key        text NOT NULL,
	hub        uuid NOT NULL,
	expires_at timestamptz NOT NULL,
	PRIMARY KEY (channel, key, hub)
)`

// Migrate creates the table in which hubs record the keys they follow; a
// database whose changes are announced ([Hub.Changed]) needs it.
// The table is UNLOGGED: it is emptied after a crash, and every hub
// records its keys again when it reconnects.
func Migrate(ctx context.Context, db migrate.Querier) error {
	return migrate.EnsureTable(ctx, db, "watch_interest", interestSchema)
}

// interestTTL bounds how long a hub that died keeps writers notifying
// for its keys; a live hub renews its rows every interestRenew.
const (
	interestTTL   = 5 * time.Minute
	interestRenew = time.Minute
)

// rowState is where a key's row stands in watch_interest.
type rowState int

const (
	rowQueued   rowState = iota // to be inserted by the next flush
	rowWriting                  // being inserted
	rowPresent                  // committed
	rowDeleting                 // being deleted
)

// registration is one key's pending insert; done is closed when it has
// committed (err nil) or failed.
type registration struct {
	done chan struct{}
	err  error
}

type keyState struct {
	refs  int // local subscribers
	row   rowState
	reg   *registration // the write new subscribers wait for
	again bool          // running streams re-read once the row is written again
}

// interest is a hub's record of the keys it follows: the rows it keeps in
// watch_interest.
type interest struct {
	mu      sync.Mutex
	keys    map[string]*keyState
	rewrite bool // write every row again (see requeue)
	kick    chan struct{}
}

func newInterest() *interest {
	return &interest{keys: map[string]*keyState{}, kick: make(chan struct{}, 1)}
}

// lapsed reports whether rows last renewed at last may have expired by now
// (renewals failed for a whole TTL, less the time to the next renewal): the
// hub then writes them again as after a reconnect, waking its streams.
func lapsed(last, now time.Time) bool {
	return now.Sub(last) >= interestTTL-interestRenew
}

func (in *interest) signal() {
	select {
	case in.kick <- struct{}{}:
	default:
	}
}

// add counts a subscriber of key and returns the registration to wait for,
// nil when the key's row is already in place.
func (in *interest) add(key string) *registration {
	in.mu.Lock()
	defer in.mu.Unlock()
	ks := in.keys[key]
	if ks == nil {
		ks = &keyState{row: rowQueued, reg: &registration{done: make(chan struct{})}}
		in.keys[key] = ks
		in.signal()
	}
	ks.refs++
	if ks.row == rowPresent {
		return nil
	}
	if ks.reg == nil { // being written or deleted: wait for the next write
		ks.reg = &registration{done: make(chan struct{})}
	}
	return ks.reg
}

// remove uncounts a subscriber of key; the last one's leaving gets the row
// deleted by the next flush.
func (in *interest) remove(key string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	ks := in.keys[key]
	if ks == nil {
		return
	}
	if ks.refs--; ks.refs == 0 {
		in.signal()
	}
}

// requeue has the next flush write every followed key again, after the
// listening connection was lost (the cluster may have restarted, which
// empties the table).
func (in *interest) requeue() {
	in.mu.Lock()
	in.rewrite = true
	in.mu.Unlock()
	in.signal()
}

// flush brings hub's rows in line with the keys followed: deletes the rows
// of keys no one follows, inserts those of new keys, renews the others when
// renew is set.
func (h *Hub) flush(ctx context.Context, renew bool) error {
	in := h.interest
	in.mu.Lock()
	if in.rewrite {
		in.rewrite = false
		for _, ks := range in.keys {
			if ks.refs > 0 && ks.row == rowPresent {
				ks.row = rowQueued
				ks.again = true
			}
		}
	}
	var dels, ins, renewed, again []string
	var regs []*registration
	for key, ks := range in.keys {
		switch {
		case ks.refs == 0 && (ks.row == rowPresent || ks.row == rowQueued):
			// A queued key may have a row (a write whose outcome is
			// unknown): delete it either way.
			ks.row = rowDeleting
			dels = append(dels, key)
			if ks.reg != nil {
				settle(ks.reg, context.Canceled)
				ks.reg = nil
			}
		case ks.row == rowQueued:
			ks.row = rowWriting
			ins = append(ins, key)
			if ks.reg != nil {
				regs = append(regs, ks.reg)
				ks.reg = nil
			}
			if ks.again {
				again = append(again, key)
			}
		case ks.row == rowPresent && renew:
			renewed = append(renewed, key)
		}
	}
	in.mu.Unlock()
	if len(dels)+len(ins) == 0 && !renew {
		return nil
	}

	err := h.write(ctx, dels, ins, renewed, renew)

	in.mu.Lock()
	defer in.mu.Unlock()
	// On an error the write may or may not have committed: assume
	// neither. Queued, a key is inserted again if followed and deleted
	// again if not (both can be repeated), and a new subscriber waits.
	for _, key := range dels {
		ks := in.keys[key]
		switch {
		case err != nil || ks.refs > 0:
			ks.row = rowQueued
			in.signal()
		default:
			delete(in.keys, key)
		}
	}
	for _, key := range ins {
		ks := in.keys[key]
		switch {
		case err != nil:
			ks.row = rowQueued
		case ks.refs == 0: // left meanwhile: delete it
			ks.row = rowPresent
			in.signal()
		default:
			ks.row = rowPresent
			ks.again = false
			if ks.reg != nil { // followed while it was written: in place now
				regs = append(regs, ks.reg)
				ks.reg = nil
			}
		}
	}
	for _, r := range regs {
		settle(r, err)
	}
	if err != nil {
		// The streams waiting fail; the keys of streams already running
		// stay queued and are written again after a backoff.
		return fmt.Errorf("record followed keys of %s: %w", h.channel, err)
	}
	// Streams already running whose key was written again re-read: a
	// change may have gone unannounced while the row was missing.
	h.wakeKeys(again)
	return nil
}

func settle(r *registration, err error) {
	r.err = err
	close(r.done)
}

// writeRows carries out one flush's writes (it is [Hub]'s write).
func (h *Hub) writeRows(ctx context.Context, dels, ins, renewed []string, renew bool) error {
	// One batch is one implicit transaction: all of it commits, or none.
	b := &pgx.Batch{}
	if len(dels) > 0 {
		b.Queue(`DELETE FROM watch_interest WHERE channel = $1 AND hub = $2 AND key = ANY($3)`, h.channel, h.id, dels)
	}
	if len(ins)+len(renewed) > 0 {
		// Renewing re-inserts too: a row swept away while this hub could
		// not renew it comes back.
		b.Queue(`INSERT INTO watch_interest (channel, key, hub, expires_at)
			SELECT $1, k, $2, now() + make_interval(secs => $4) FROM unnest($3::text[]) AS k
			ON CONFLICT (channel, key, hub) DO UPDATE SET expires_at = excluded.expires_at`,
			h.channel, h.id, append(append([]string(nil), ins...), renewed...), interestTTL.Seconds())
	}
	if renew {
		b.Queue(`DELETE FROM watch_interest WHERE expires_at < now()`) // rows of hubs that died
	}
	if b.Len() == 0 {
		return nil
	}
	return h.pool.SendBatch(ctx, b).Close()
}

// idle reports whether the record is written.
func (in *interest) idle() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.rewrite {
		return false
	}
	for _, ks := range in.keys {
		if ks.row != rowPresent {
			return false
		}
	}
	return true
}
