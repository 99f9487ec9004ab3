// Package watch tells streaming RPCs when the rows they follow change,
// without polling: writers announce a change with [Hub.Changed] once their
// transaction has committed (the hub sends what gathers meanwhile in one
// statement), and one [Hub] per process LISTENs on a single connection and
// wakes the subscribers of the changed key. Only keys some hub follows are
// notified: hubs record the keys they follow in a table ([Migrate] creates
// it), so a change nobody watches costs an index lookup, not a NOTIFY.
//
// A wake-up only says "look again": subscribers re-read the state they
// stream, so a notification that is lost (for instance while the listening
// connection is re-established, after which the hub wakes the streams of
// every key it records again) costs nothing but an extra read.
//
// Streams are long-lived and a change can wake thousands at once, so two
// bounds keep them from hurting the rest of the process: a [Limit] on the
// number of streams (past it, Follow fails with [ErrTooManyStreams]), and a
// hub's own pool ([Hub.DB]) for the LISTEN connection, the record of
// followed keys and the streams' reads, apart from the pool the consumers
// and other RPCs use.
package watch

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"

	"github.com/switchyard/switchyard/platform/backoff"
	"github.com/switchyard/switchyard/platform/grpcerr"
)

// ErrTooManyStreams is returned by Follow when the hub's [Limit] is
// reached; it answers RESOURCE_EXHAUSTED, so that clients back off or
// watch through another replica.
var ErrTooManyStreams error = grpcerr.New(codes.ResourceExhausted, "too many watch streams on this server; retry later")

// Limit bounds the number of streams following at once; share one between
// the hubs of a process to bound the process.
type Limit struct {
	max      int64
	active   atomic.Int64
	rejected atomic.Int64
}

// NewLimit returns a limit of max streams (max <= 0: no limit).
func NewLimit(max int) *Limit { return &Limit{max: int64(max)} }

func (l *Limit) acquire() bool {
	if n := l.active.Add(1); l.max > 0 && n > l.max {
		l.active.Add(-1)
		l.rejected.Add(1)
		return false
	}
	return true
}

func (l *Limit) release() { l.active.Add(-1) }

// Active returns the number of streams following now.
func (l *Limit) Active() int64 { return l.active.Load() }

// Rejected returns how many streams were refused with ErrTooManyStreams.
func (l *Limit) Rejected() int64 { return l.rejected.Load() }

// Hub fans one LISTEN connection out to subscribers by key, and records
// the keys it follows so that writers notify them.
type Hub struct {
	pool     *pgxpool.Pool
	channel  string
	logger   *slog.Logger
	limit    *Limit
	id       uuid.UUID // this hub's rows in watch_interest
	interest *interest
	changed  *changed
	// write is writeRows and forget forgetRows; tests of the bookkeeping
	// replace them.
	write  func(ctx context.Context, dels, ins, renewed []string, renew bool) error
	forget func(ctx context.Context) error
	// steadyAfter is how long a LISTEN connection must have lasted for its
	// loss to count as a new failure rather than one more of a series.
	steadyAfter time.Duration

	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{}
}

// NewHub returns a hub for channel whose LISTEN connection comes from pool;
// start it with Run. Streams are bounded by limit (nil: unbounded). pool
// should be the hub's own (see the package doc): its streams read through
// [Hub.DB].
func NewHub(pool *pgxpool.Pool, channel string, limit *Limit, logger *slog.Logger) *Hub {
	if logger == nil {
		logger = slog.Default()
	}
	if limit == nil {
		limit = NewLimit(0)
	}
	h := &Hub{pool: pool, channel: channel, limit: limit, logger: logger, id: uuid.New(), interest: newInterest(), changed: newChanged(),
		subs: map[string]map[chan struct{}]struct{}{}}
	h.write, h.forget = h.writeRows, h.forgetRows
	h.steadyAfter = time.Minute
	return h
}

// DB returns the pool the hub's streams read through.
func (h *Hub) DB() *pgxpool.Pool { return h.pool }

// Subscribe returns a channel that receives a value whenever key changes
// (coalesced: one pending wake-up at most), and a function to unsubscribe.
// It returns once writers notify key: read the state it follows after it,
// not before. It needs the hub running (see [Hub.Run]) and fails if ctx
// ends or stopping is closed first.
func (h *Hub) Subscribe(ctx context.Context, key string, stopping <-chan struct{}) (<-chan struct{}, func(), error) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	if h.subs[key] == nil {
		h.subs[key] = map[chan struct{}]struct{}{}
	}
	h.subs[key][ch] = struct{}{}
	h.mu.Unlock()
	unsubscribe := func() {
		h.mu.Lock()
		delete(h.subs[key], ch)
		if len(h.subs[key]) == 0 {
			delete(h.subs, key)
		}
		h.mu.Unlock()
		h.interest.remove(key)
	}
	if reg := h.interest.add(key); reg != nil {
		select {
		case <-reg.done:
			if reg.err != nil {
				unsubscribe()
				return nil, nil, fmt.Errorf("watch %s: %w", key, reg.err)
			}
		case <-ctx.Done():
			unsubscribe()
			return nil, nil, ctx.Err()
		case <-stopping:
			unsubscribe()
			return nil, nil, ErrStopping
		}
	}
	return ch, unsubscribe, nil
}

// wakeKeys wakes the subscribers of keys.
func (h *Hub) wakeKeys(keys []string) {
	for _, k := range keys {
		h.wake(k)
	}
}

// wake wakes the subscribers of key.
func (h *Hub) wake(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs[key] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// ErrStopping is returned by Follow when the server begins to shut down;
// it answers UNAVAILABLE, so that clients watch again elsewhere.
var ErrStopping error = grpcerr.New(codes.Unavailable, "server shutting down; watch again")

// Follow calls step now and again whenever key may have changed (a
// notification, or every recheck as a safety net) until step reports done
// or fails, ctx ends, or stopping is closed (ErrStopping). It subscribes
// before the first step, so no change between the two is missed. Past the
// hub's limit it fails at once with ErrTooManyStreams.
func (h *Hub) Follow(ctx context.Context, key string, recheck time.Duration, stopping <-chan struct{}, step func() (done bool, err error)) error {
	if !h.limit.acquire() {
		return ErrTooManyStreams
	}
	defer h.limit.release()
	changed, unsubscribe, err := h.Subscribe(ctx, key, stopping)
	if err != nil {
		return err
	}
	defer unsubscribe()
	tick := time.NewTicker(recheck)
	defer tick.Stop()
	for {
		done, err := step()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-stopping:
			return ErrStopping
		case <-changed:
		case <-tick.C:
		}
	}
}

// Run listens, keeps the hub's record of the keys it follows and sends
// what [Hub.Changed] announces, until ctx ends, re-establishing the
// connection after errors.
func (h *Hub) Run(ctx context.Context) error {
	renew := time.NewTicker(interestRenew)
	defer renew.Stop()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); h.record(ctx, renew.C) }()
	go func() { defer wg.Done(); h.announce(ctx) }()
	defer wg.Wait()
	retry := backoff.New(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		started := time.Now()
		listened, err := h.listen(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if listened && time.Since(started) >= h.steadyAfter {
			// A connection that worked for a while: losing it is a new
			// failure, not one more of a series (which would find the
			// pause at its longest, however long ago the last one was).
			retry.Reset()
		}
		// Changes may be missed until the connection is back; the rewrite
		// of the followed keys that follows it wakes their streams.
		h.logger.Warn("watch: listening connection lost; reconnecting", "channel", h.channel, "error", err, "retry_in", retry.Next())
		if !retry.Wait(ctx) {
			return nil
		}
	}
	return nil
}

// listen LISTENs and wakes streams until the connection fails; listened
// reports whether LISTEN had succeeded.
func (h *Hub) listen(ctx context.Context) (listened bool, err error) {
	conn, err := h.pool.Acquire(ctx)
	if err != nil {
		return false, err
	}
	// A LISTENing connection must not go back to the pool.
	pc := conn.Hijack()
	defer pc.Close(context.Background())
	if _, err := pc.Exec(ctx, "LISTEN "+pgx.Identifier{h.channel}.Sanitize()); err != nil {
		return false, err
	}
	// The cluster may have restarted, which empties the record of followed
	// keys: write it again. Its streams are woken once it is written, which
	// also covers anything that changed while nobody listened.
	h.interest.requeue()
	for {
		n, err := pc.WaitForNotification(ctx)
		if err != nil {
			return true, err
		}
		h.wake(n.Payload)
	}
}

// forgetRows deletes this hub's rows (it is [Hub]'s forget).
func (h *Hub) forgetRows(ctx context.Context) error {
	_, err := h.pool.Exec(ctx, `DELETE FROM watch_interest WHERE hub = $1`, h.id)
	return err
}

// record keeps watch_interest in line with the keys followed (see
// interest.go) until ctx ends, then deletes this hub's rows. Each value
// from renewals has the next flush renew the rows.
func (h *Hub) record(ctx context.Context, renewals <-chan time.Time) {
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := h.forget(dctx); err != nil {
			h.logger.Warn("watch: delete followed keys", "channel", h.channel, "error", err)
		}
	}()
	retry := backoff.New(50*time.Millisecond, 5*time.Second)
	renewing := false // kept until a flush succeeds
	renewed := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.interest.kick:
		case <-renewals:
			renewing = true
			if lapsed(renewed, time.Now()) {
				h.interest.requeue()
			}
		}
		if err := h.flush(ctx, renewing); err != nil {
			if ctx.Err() != nil {
				return
			}
			h.logger.Warn("watch: recording followed keys failed; retrying", "channel", h.channel, "error", err, "retry_in", retry.Next())
			if !retry.Wait(ctx) {
				return
			}
			h.interest.signal()
			continue
		}
		if renewing {
			renewing, renewed = false, time.Now()
		}
		retry.Reset()
	}
}
