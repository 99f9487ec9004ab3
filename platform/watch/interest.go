package watch

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchyard/switchyard/platform/migrate"
)

// A NOTIFY is not free: PostgreSQL serialises the commits of every
// notifying transaction in the cluster on one lock, held through the
// commit's WAL flush, which undoes group commit (8 writers on a durable
// cluster committed half as many transactions with a pg_notify in each).
// So writers notify only for keys some hub follows. Each hub records the
// keys it follows in watch_interest, and a writer's notification is a
// SELECT that finds no row when nobody follows the key.
//
// A writer that looked before a hub's row was committed, and commits after
// the stream's first read, would be missed. The hub closes that window
// without any lock on the writers' side: after committing its rows it
// notes the oldest transaction id not yet started, lets the streams read,
// and wakes them once more when every transaction older than that has
// ended (the writer's transaction has an id, since Notify follows the
// writes it announces).
const interestSchema = `
CREATE UNLOGGED TABLE IF NOT EXISTS watch_interest (
	channel    text NOT NULL,
	key        text NOT NULL,
	hub        uuid NOT NULL,
	expires_at timestamptz NOT NULL,
	PRIMARY KEY (channel, key, hub)
)`

// Migrate creates the table in which hubs record the keys they follow; a
// database that [Notify] writes to needs it. The table is UNLOGGED: it is
// emptied after a crash, and every hub records its keys again when it
// reconnects.
func Migrate(ctx context.Context, db migrate.Querier) error {
	return migrate.EnsureTable(ctx, db, "watch_interest", interestSchema)
}

const (
	// interestTTL bounds how long a hub that died keeps writers
	// notifying for its keys; a live hub renews its rows every
	// interestRenew.
	interestTTL   = 5 * time.Minute
	interestRenew = time.Minute
	// catchUpWait bounds how long a hub waits for the transactions that
	// were running when it recorded a key (a long one elsewhere in the
	// cluster holds them all back) before it wakes the key's streams
	// anyway.
	catchUpWait = 10 * time.Second
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
	refs int // local subscribers
	row  rowState
	reg  *registration // the insert waited for, while queued or writing (or deleting with refs > 0)
}

// catchUp is a set of keys to wake once every transaction below xmax ended.
type catchUp struct {
	xmax  int64
	keys  []string
	since time.Time
}

// interest is a hub's record of the keys it follows: the rows it keeps in
// watch_interest, and the wake-ups it owes its streams.
type interest struct {
	mu      sync.Mutex
	keys    map[string]*keyState
	pending []catchUp
	rewrite bool // write every row again (see requeue)
	kick    chan struct{}
}

func newInterest() *interest {
	return &interest{keys: map[string]*keyState{}, kick: make(chan struct{}, 1)}
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
// of keys no one follows, inserts those of new keys, renews them all when
// renew is set, and wakes the keys whose catch-up is due.
func (h *Hub) flush(ctx context.Context, renew bool) error {
	in := h.interest
	in.mu.Lock()
	if in.rewrite {
		in.rewrite = false
		for _, ks := range in.keys {
			if ks.row == rowPresent {
				ks.row = rowQueued
			}
		}
	}
	var dels, ins, again []string
	var regs []*registration
	for key, ks := range in.keys {
		switch {
		case ks.refs == 0 && ks.row == rowPresent:
			ks.row = rowDeleting
			dels = append(dels, key)
		case ks.refs == 0 && ks.row == rowQueued:
			delete(in.keys, key) // given up before it was written
			if ks.reg != nil {
				ks.reg.err = context.Canceled
				close(ks.reg.done)
			}
		case ks.row == rowQueued:
			ks.row = rowWriting
			ins = append(ins, key)
			if ks.reg != nil {
				regs = append(regs, ks.reg)
				ks.reg = nil
			} else {
				again = append(again, key)
			}
		}
	}
	pending := len(in.pending) > 0
	in.mu.Unlock()
	if len(dels)+len(ins) == 0 && !renew && !pending {
		return nil
	}

	conn, err := h.pool.Acquire(ctx)
	if err == nil {
		defer conn.Release()
		err = h.write(ctx, conn, dels, ins, renew)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	settle := func(r *registration, err error) {
		r.err = err
		close(r.done)
	}
	// The write is one transaction: all of it happened, or none.
	for _, key := range dels {
		ks := in.keys[key]
		switch {
		case err != nil: // still there; delete it next time
			ks.row = rowPresent
			if ks.reg != nil { // followed again: the row never went
				settle(ks.reg, nil)
				ks.reg = nil
			}
		case ks.refs == 0:
			delete(in.keys, key)
		default: // followed again meanwhile
			ks.row = rowQueued
			in.signal()
		}
	}
	for _, key := range ins {
		ks := in.keys[key]
		if err != nil {
			ks.row = rowQueued
			continue
		}
		ks.row = rowPresent
		if ks.reg != nil { // followed while it was written: in place now
			regs = append(regs, ks.reg)
			ks.reg = nil
		}
		if ks.refs == 0 {
			in.signal() // left while it was written: delete it
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

// write carries out one flush on conn, and settles the catch-ups.
func (h *Hub) write(ctx context.Context, conn *pgxpool.Conn, dels, ins []string, renew bool) error {
	// One batch is one implicit transaction: all of it commits, or none.
	b := &pgx.Batch{}
	if len(dels) > 0 {
		b.Queue(`DELETE FROM watch_interest WHERE channel = $1 AND hub = $2 AND key = ANY($3)`, h.channel, h.id, dels)
	}
	if renew {
		b.Queue(`UPDATE watch_interest SET expires_at = now() + make_interval(secs => $2) WHERE hub = $1`, h.id, interestTTL.Seconds())
		b.Queue(`DELETE FROM watch_interest WHERE expires_at < now()`) // rows of hubs that died
	}
	if len(ins) > 0 {
		b.Queue(`INSERT INTO watch_interest (channel, key, hub, expires_at)
			SELECT $1, k, $2, now() + make_interval(secs => $4) FROM unnest($3::text[]) AS k
			ON CONFLICT (channel, key, hub) DO UPDATE SET expires_at = excluded.expires_at`,
			h.channel, h.id, ins, interestTTL.Seconds())
	}
	if b.Len() > 0 {
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
	}
	// After the inserts committed, before the streams read: which
	// transactions were running then, and which have ended by now.
	var xmin, xmax int64
	if err := conn.QueryRow(ctx, `SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint FROM pg_current_snapshot() AS s`).Scan(&xmin, &xmax); err != nil {
		return err
	}
	in := h.interest
	in.mu.Lock()
	defer in.mu.Unlock()
	now := time.Now()
	if len(ins) > 0 && xmin < xmax {
		in.pending = append(in.pending, catchUp{xmax: xmax, keys: ins, since: now})
	}
	kept := in.pending[:0]
	for _, c := range in.pending {
		if xmin >= c.xmax || now.Sub(c.since) >= catchUpWait {
			h.wakeKeys(c.keys) // waited long enough: one more read costs little
			continue
		}
		kept = append(kept, c)
	}
	in.pending = kept
	return nil
}

// catchingUp reports whether wake-ups wait for running transactions.
func (in *interest) catchingUp() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.pending) > 0
}

// idle reports whether the record is written and every wake-up it owes
// delivered.
func (in *interest) idle() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.rewrite || len(in.pending) > 0 {
		return false
	}
	for _, ks := range in.keys {
		if ks.row != rowPresent {
			return false
		}
	}
	return true
}
