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
package watch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Notify announces, inside tx, that key changed on channel.
func Notify(ctx context.Context, tx pgx.Tx, channel, key string) error {
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", channel, key); err != nil {
		return fmt.Errorf("notify %s %s: %w", channel, key, err)
	}
	return nil
}

// Hub fans one LISTEN connection out to subscribers by key.
type Hub struct {
	pool    *pgxpool.Pool
	channel string
	logger  *slog.Logger

	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{}
}

// NewHub returns a hub for channel; start it with Run.
func NewHub(pool *pgxpool.Pool, channel string, logger *slog.Logger) *Hub {
	if logger == nil {
		logger = slog.Default()
	}
	return &Hub{pool: pool, channel: channel, logger: logger, subs: map[string]map[chan struct{}]struct{}{}}
}

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
// the service maps it to UNAVAILABLE so that clients watch again elsewhere.
var ErrStopping = errors.New("server shutting down; watch again")

// Follow calls step now and again whenever key may have changed (a
// notification, or every recheck as a safety net) until step reports done
// or fails, ctx ends, or stopping is closed (ErrStopping). It subscribes
// before the first step, so no change between the two is missed.
func (h *Hub) Follow(ctx context.Context, key string, recheck time.Duration, stopping <-chan struct{}, step func() (done bool, err error)) error {
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
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := h.listen(ctx)
		if ctx.Err() != nil {
			return nil
		}
		h.logger.Warn("watch: listening connection lost; reconnecting", "channel", h.channel, "error", err)
		h.wake("", true) // changes may have been missed meanwhile
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
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
