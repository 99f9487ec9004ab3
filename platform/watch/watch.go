// Package watch tells streaming RPCs when the rows they follow change,
// without polling: writers call [Notify] inside their transaction
// (PostgreSQL delivers the notification only if it commits), and one [Hub]
// per process LISTENs on a single connection and wakes the subscribers of
// the changed key.
//
// A wake-up only says "look again": subscribers re-read the state they
// stream, so a notification that is lost (for instance while the listening
// connection is re-established, when the hub wakes everyone) costs nothing
// but an extra read.
//
// Streams are long-lived and a change can wake thousands at once, so two
// bounds keep them from hurting the rest of the process: a [Limit] on the
// number of streams (past it, Follow fails with [ErrTooManyStreams]), and a
// hub's own pool ([Hub.DB]) for the LISTEN connection and the streams'
// reads, apart from the pool the consumers and other RPCs use.
package watch

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"

	"github.com/switchyard/switchyard/platform/backoff"
	"github.com/switchyard/switchyard/platform/grpcerr"
)

// Notify announces, inside tx, that key changed on channel.
func Notify(ctx context.Context, tx pgx.Tx, channel, key string) error {
	if _, err := tx.Exec(ctx, notifySQL, channel, key); err != nil {
		return fmt.Errorf("notify %s %s: %w", channel, key, err)
	}
	return nil
}

// QueueNotify adds [Notify]'s statement to batch, for a writer that sends
// its statements in one round trip (the batch must run in the writing
// transaction).
func QueueNotify(batch *pgx.Batch, channel, key string) {
	batch.Queue(notifySQL, channel, key)
}

const notifySQL = "SELECT pg_notify($1, $2)"

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

// Hub fans one LISTEN connection out to subscribers by key.
type Hub struct {
	pool    *pgxpool.Pool
	channel string
	logger  *slog.Logger
	limit   *Limit

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
	return &Hub{pool: pool, channel: channel, limit: limit, logger: logger, subs: map[string]map[chan struct{}]struct{}{}}
}

// DB returns the pool the hub's streams read through.
func (h *Hub) DB() *pgxpool.Pool { return h.pool }

// Subscribe returns a channel that receives a value whenever key changes
// (coalesced: one pending wake-up at most), and a function to unsubscribe.
func (h *Hub) Subscribe(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	if h.subs[key] == nil {
		h.subs[key] = map[chan struct{}]struct{}{}
	}
	h.subs[key][ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs[key], ch)
		if len(h.subs[key]) == 0 {
			delete(h.subs, key)
		}
		h.mu.Unlock()
	}
}

func (h *Hub) wake(key string, all bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, set := range h.subs {
		if !all && k != key {
			continue
		}
		for ch := range set {
			select {
			case ch <- struct{}{}:
			default:
			}
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
	changed, unsubscribe := h.Subscribe(key)
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

// Run listens until ctx ends, re-establishing the connection after errors.
func (h *Hub) Run(ctx context.Context) error {
	retry := backoff.New(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		err := h.listen(ctx)
		if ctx.Err() != nil {
			return nil
		}
		h.logger.Warn("watch: listening connection lost; reconnecting", "channel", h.channel, "error", err, "retry_in", retry.Next())
		h.wake("", true) // changes may have been missed meanwhile
		if !retry.Wait(ctx) {
			return nil
		}
	}
	return nil
}

func (h *Hub) listen(ctx context.Context) error {
	conn, err := h.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// A LISTENing connection must not go back to the pool.
	pc := conn.Hijack()
	defer pc.Close(context.Background())
	if _, err := pc.Exec(ctx, "LISTEN "+pgx.Identifier{h.channel}.Sanitize()); err != nil {
		return err
	}
	h.wake("", true) // anything that changed before LISTEN took effect
	for {
		n, err := pc.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		h.wake(n.Payload, false)
	}
}
