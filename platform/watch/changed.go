package watch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/switchyard/switchyard/platform/backoff"
	"github.com/switchyard/switchyard/platform/pgerr"
)

// changed holds the keys [Hub.Changed] was told about and the hub has not
// announced yet.
type changed struct {
	mu      sync.Mutex
	keys    map[string]struct{}
	stopped bool          // announce has returned: Changed sends at once
	ready   chan struct{} // one pending signal at most
}

func newChanged() *changed {
	return &changed{keys: map[string]struct{}{}, ready: make(chan struct{}, 1)}
}

// add queues key; it returns false, queueing nothing, once announce has
// returned.
func (c *changed) add(key string) bool {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return false
	}
	c.keys[key] = struct{}{}
	c.mu.Unlock()
	select {
	case c.ready <- struct{}{}:
	default:
	}
	return true
}

// putBack queues keys again, for the next send.
func (c *changed) putBack(keys []string) {
	for _, k := range keys {
		c.add(k)
	}
}

// take empties the set and returns what it held; with stop, later adds
// are refused.
func (c *changed) take(stop bool) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]string, 0, len(c.keys))
	for k := range c.keys {
		keys = append(keys, k)
	}
	clear(c.keys)
	c.stopped = c.stopped || stop
	return keys
}

// Changed announces that key changed on the hub's channel, to the streams
// following it in every process: call it after the transaction that
// changed key has committed. It does not block while the hub runs: the
// hub's Run sends what has gathered in one statement, and only for keys
// some hub follows. Once Run has returned (the process is stopping, and a
// consumer's last commits finish) it sends key itself.
//
// The writer's own commit does not notify: PostgreSQL flushes notifying
// commits one at a time under one cluster-wide lock, so writers that
// notified in their transactions would lose group commit. The announcement
// is not transactional: if the process dies between the commit and the
// send, or the send fails, the streams see the change at their next
// recheck.
func (h *Hub) Changed(key string) {
	if !h.changed.add(key) {
		h.sendDetached([]string{key}, "after the hub stopped")
	}
}

// announce sends the keys given to Changed until ctx ends, then what is
// left, briefly. Keys given while a send is in flight go in the next one,
// so a busy writer's announcements share one notifying commit.
func (h *Hub) announce(ctx context.Context) {
	retry := backoff.New(50*time.Millisecond, 5*time.Second)
	for {
		select {
		case <-ctx.Done():
		case <-h.changed.ready:
		}
		if ctx.Err() != nil {
			if keys := h.changed.take(true); len(keys) > 0 {
				h.sendDetached(keys, "at stop")
			}
			return
		}
		keys := h.changed.take(false)
		if len(keys) == 0 {
			continue
		}
		err := h.send(ctx, keys)
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			retry.Reset()
		case ctx.Err() != nil:
			h.changed.putBack(keys) // sent at stop
		case errors.As(err, &pgErr) && !pgerr.Transient(err):
			// PostgreSQL refused the statement (not because it is going
			// away or busy): sending it again would fail again and hold up
			// every later change. Streams recheck.
			h.logger.Error("watch: announcing changes refused; dropped", "channel", h.channel, "keys", len(keys), "error", err)
		default:
			h.logger.Warn("watch: announcing changes failed; retrying", "channel", h.channel, "keys", len(keys), "error", err, "retry_in", retry.Next())
			h.changed.putBack(keys)
			retry.Wait(ctx)
		}
	}
}

// sendDetached sends keys once Run's context has ended, bounded on its
// own; a failure is logged (the streams recheck).
func (h *Hub) sendDetached(keys []string, when string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := h.send(ctx, keys); err != nil {
		h.logger.Warn("watch: announce changes "+when, "channel", h.channel, "keys", len(keys), "error", err)
	}
}

// send notifies the followed ones among keys, in one statement. A
// statement of its own, after the writers' commits, cannot miss a stream
// (see interest.go): a stream whose key it does not see recorded recorded
// it afterwards, and reads after that, so it sees the change anyway.
func (h *Hub) send(ctx context.Context, keys []string) error {
	if _, err := h.pool.Exec(ctx, `SELECT pg_notify($1, k) FROM unnest($2::text[]) AS k
		WHERE EXISTS (SELECT FROM watch_interest WHERE channel = $1 AND key = k AND expires_at > now())`, h.channel, keys); err != nil {
		return fmt.Errorf("notify %d keys: %w", len(keys), err)
	}
	return nil
}
