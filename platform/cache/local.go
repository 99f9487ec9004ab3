package cache

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// invalidations is the channel Redis publishes tracking invalidations on
// for a client that redirects them in RESP2.
const invalidations = "__redis__:invalidate"

// local keeps entries read from Redis in the process, for [Config.Local];
// a nil *local keeps nothing.
// Redis tells it of every change of a key under the prefix (CLIENT
// TRACKING in broadcast mode, redirected to a connection subscribed to
// the invalidation channel), and it drops the key's entry. While that
// connection is not known to be up, nothing is served or kept.
//
// A read that found an entry in Redis keeps it only if no invalidation
// arrived since the read was sent: the generation counts invalidations, so
// a value Redis replaced while the read was on its way (whose invalidation
// may arrive before the value) is never kept.
type local struct {
	prefix string
	ttl    time.Duration
	max    int

	live atomic.Bool   // invalidations are being received
	gen  atomic.Uint64 // raised before every drop

	mu      sync.RWMutex
	entries map[string]localEntry // by key, without the prefix
}

type localEntry struct {
	entry Entry
	until int64 // unix nanoseconds after which it is not served
}

func newLocal(prefix string, ttl time.Duration, max int) *local {
	return &local{prefix: prefix, ttl: ttl, max: max, entries: map[string]localEntry{}}
}

// get returns key's entry if one is kept, fresh, and invalidations flow.
func (l *local) get(key string) (Entry, bool) {
	if l == nil || !l.live.Load() {
		return Entry{}, false
	}
	l.mu.RLock()
	le, ok := l.entries[key]
	l.mu.RUnlock()
	if !ok || time.Now().UnixNano() > le.until {
		return Entry{}, false
	}
	return le.entry, true
}

// generation is taken before a read from Redis and given to put.
func (l *local) generation() uint64 {
	if l == nil {
		return 0
	}
	return l.gen.Load()
}

// put keeps e, read from Redis by a read sent at generation g, unless an
// invalidation arrived since. When full, it starts over rather than
// choose what to evict: entries are cheap to read again.
func (l *local) put(key string, e Entry, g uint64) {
	if l == nil || !l.live.Load() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	// Checked under the lock that drop takes after raising the generation:
	// either this sees the raise, or drop deletes what this keeps.
	if l.gen.Load() != g {
		return
	}
	if _, ok := l.entries[key]; !ok && len(l.entries) >= l.max {
		clear(l.entries)
	}
	l.entries[key] = localEntry{entry: e, until: time.Now().Add(l.ttl).UnixNano()}
}

// drop forgets keys (given with the prefix, as Redis names them).
func (l *local) drop(keys ...string) {
	if l == nil {
		return
	}
	l.gen.Add(1)
	l.mu.Lock()
	for _, k := range keys {
		delete(l.entries, strings.TrimPrefix(k, l.prefix))
	}
	l.mu.Unlock()
}

// reset forgets everything: Redis was flushed, or invalidations may have
// been lost.
func (l *local) reset() {
	l.gen.Add(1)
	l.mu.Lock()
	clear(l.entries)
	l.mu.Unlock()
}

// listen receives invalidations from Redis until ctx is done, reconnecting
// after any failure (the entries are forgotten, since invalidations may
// have been lost). opts is the cache's client's, so that dialling and
// setting up a connection are bounded by its Timeout; the connection is
// its own, in RESP2, subscribed to the invalidation channel and
// redirecting its own tracking there, set up again on every connect. A
// connection silent for a ping interval is pinged; silent for another, it
// is taken as lost. (go-redis dials again before it returns a broken
// connection's error, so entries can still be kept for up to one dial and
// set-up after a loss: LocalTTL bounds that too.)
func (l *local) listen(ctx context.Context, opts *redis.Options, ping time.Duration) {
	o := *opts
	o.Protocol = 2
	o.OnConnect = func(ctx context.Context, cn *redis.Conn) error {
		id, err := cn.ClientID(ctx).Result()
		if err != nil {
			return err
		}
		return cn.Do(ctx, "CLIENT", "TRACKING", "on", "REDIRECT", id, "BCAST", "PREFIX", l.prefix).Err()
	}
	client := redis.NewClient(&o)
	defer client.Close()
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		if l.receive(ctx, client.Subscribe(ctx, invalidations), ping) {
			backoff = 50 * time.Millisecond
		}
		l.live.Store(false)
		l.reset()
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// receive applies invalidations from ps until it fails, and reports
// whether it was subscribed at all.
func (l *local) receive(ctx context.Context, ps *redis.PubSub, ping time.Duration) (subscribed bool) {
	defer ps.Close()
	// A receive waits on the socket, not on ctx: closing ps ends it.
	defer context.AfterFunc(ctx, func() { _ = ps.Close() })()
	pinged := false
	for ctx.Err() == nil {
		msg, err := ps.ReceiveTimeout(ctx, ping)
		var nerr interface{ Timeout() bool }
		switch {
		case err != nil && errors.As(err, &nerr) && nerr.Timeout() && !pinged && ctx.Err() == nil:
			if ps.Ping(ctx) != nil {
				return subscribed
			}
			pinged = true
			continue
		case err != nil:
			return subscribed
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" && m.Channel == invalidations {
				// Tracking was turned on before the subscription: from
				// now on no change is missed.
				l.reset()
				l.live.Store(true)
				subscribed = true
			}
		case *redis.Message:
			// A flush is reported with a null payload, which go-redis
			// cannot decode: the receive fails, and everything is
			// forgotten as after any failure.
			l.drop(m.PayloadSlice...)
		}
	}
	return subscribed
}
