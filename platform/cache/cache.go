// Package cache is a read-through cache of versioned values in Redis that
// is never wrong for long and never takes reads down.
//
// Every value has a version that its source of truth (a database row)
// raises with every change. Redis keeps, per key, only the highest version
// written: [Cache.Set] and the fill after a miss go through one Lua script
// that compares versions and writes only a newer one, atomically in Redis.
// So a fill that read version n and is delayed until after version n+1 was
// written leaves n+1 in place, and a late or replayed update is a no-op.
//
// Redis is never required: a read that Redis cannot answer within
// [Config.Timeout] (unreachable, slow, refusing writes) is served by the
// loader, counted as an error and logged at most once per
// [Config.LogEvery]. After [Config.SkipAfter] failures in a row Redis is
// left alone for [Config.Cooldown], so a sick Redis costs a few timeouts
// per cooldown rather than one per read, while one slow call on a busy
// machine costs one read, not a second of them; then it is tried again, so
// the cache heals without a restart.
//
// Concurrent misses of one key in one process share one load (and one
// fill): the loader runs once, and every caller waits for its result under
// its own context.
//
// A write that fails, or is not tried because Redis is cooling down, may
// leave an older version in Redis. The process remembers the key (up to
// [Config.MaxStale] keys) and reads it from the loader, refilling Redis,
// until a write of that version or a newer one has gone through, or for
// twice TTL at most (by then the older entry has expired): whoever wrote
// reads its write, and a Redis that answers reads but refuses writes
// (full, with no eviction) serves no old value meanwhile. Such reads count
// as errors.
//
// With [Config.Local] the process also keeps what it read from Redis, and
// Redis reports every change of a key under the prefix to it (CLIENT
// TRACKING in broadcast mode, on a connection of its own), which drops the
// key's entry: most reads then cost no round trip, and a change is seen
// once its report has arrived. Once that connection is known to be broken
// (at once when it fails, after two [Config.LocalPing] intervals when it
// falls silent), everything kept is forgotten and nothing is kept until it
// is back; an entry is never served for longer than [Config.LocalTTL].
//
// Entries expire after [Config.TTL]. The expiry is a backstop, not the way
// entries are kept current: it bounds how long a value can stay wrong after
// an event that was lost (a Redis that lost writes, an update dead-lettered)
// and keeps memory bounded by what is read.
//
//	c, err := cache.New(cache.Config{URL: "redis://127.0.0.1:6379/1", Prefix: "shop:product:"})
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	// A read: from Redis, or on a miss from the database (and then filled).
//	e, err := c.Get(ctx, sku, func(ctx context.Context) (cache.Entry, error) {
//		return readProduct(ctx, sku) // the row and its version
//	})
//	if err != nil {
//		return err
//	}
//	// After a commit, or from an event: written only if newer than Redis's.
//	_, err = c.Set(ctx, sku, cache.Entry{Version: e.Version + 1, Value: changed})
//	return err
package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Entry is a value and its version.
type Entry struct {
	// Version orders the values of a key: a higher one is newer. Versions
	// are compared as Lua numbers (doubles), exact up to 2^53.
	Version int64
	// Value is the cached bytes.
	Value []byte
}

// Loader reads a key's current value and version from the source of truth.
type Loader func(ctx context.Context) (Entry, error)

// Config configures a cache. URL is required.
type Config struct {
	// URL is the Redis server (redis://host:port/db).
	URL string
	// Prefix is put before every key, so that several caches can share a
	// Redis database.
	Prefix string
	// Timeout bounds every Redis call (default 100ms); there are no
	// retries, so it bounds what a read can lose to a sick Redis.
	Timeout time.Duration
	// SkipAfter is how many Redis calls in a row must fail before Redis
	// is skipped for Cooldown (default 3).
	SkipAfter int
	// Cooldown is how long Redis is skipped once it has failed SkipAfter
	// times in a row (default 1s); then one call tries it again.
	Cooldown time.Duration
	// TTL is how long an entry lives without being rewritten (default 10m).
	TTL time.Duration
	// LoadTimeout bounds a shared load after a miss (default 10s): it runs
	// on its own context, since the caller that started it may go away
	// while others wait for it.
	LoadTimeout time.Duration
	// LogEvery is the least time between two log lines about failures of
	// Redis (default 10s); every failure is counted in the metrics.
	LogEvery time.Duration
	// Logger receives the cache's logs (default slog.Default()).
	Logger *slog.Logger

	// Local keeps what reads find in Redis in the process as well, so that
	// most reads cost no round trip. Redis reports every change of a key
	// under Prefix (in any database) to the process (CLIENT TRACKING in
	// broadcast mode, on a connection of its own), which then drops its
	// entry; once that connection is known to be broken, nothing is kept
	// until it is back. A change made elsewhere is seen here once its
	// report has arrived, normally well under a millisecond after Redis
	// applied it; one made through this cache, at once.
	Local bool
	// LocalTTL is the longest an entry is served from the process (default
	// 1s): the backstop for a report lost on a connection not yet known
	// to be broken.
	LocalTTL time.Duration
	// LocalMax bounds the entries kept in the process (default 10,000);
	// when it is reached they are dropped and kept anew.
	LocalMax int
	// LocalPing is how long the report connection may be silent before it
	// is pinged; silent for another LocalPing it is taken as broken
	// (default 1s).
	LocalPing time.Duration
	// MaxStale bounds the keys remembered after failed writes (default
	// 100,000); past it, every read goes to the loader until the oldest
	// entry Redis may hold has expired (twice TTL).
	MaxStale int
}

func (c *Config) setDefaults() error {
	if c.URL == "" {
		return errors.New("cache: URL is required")
	}
	if c.Timeout <= 0 {
		c.Timeout = 100 * time.Millisecond
	}
	if c.SkipAfter <= 0 {
		c.SkipAfter = 3
	}
	if c.Cooldown <= 0 {
		c.Cooldown = time.Second
	}
	if c.TTL <= 0 {
		c.TTL = 10 * time.Minute
	}
	if c.LoadTimeout <= 0 {
		c.LoadTimeout = 10 * time.Second
	}
	if c.LogEvery <= 0 {
		c.LogEvery = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.LocalTTL <= 0 {
		c.LocalTTL = time.Second
	}
	if c.LocalMax <= 0 {
		c.LocalMax = 10_000
	}
	if c.LocalPing <= 0 {
		c.LocalPing = time.Second
	}
	if c.MaxStale <= 0 {
		c.MaxStale = 100_000
	}
	c.Logger = c.Logger.With("component", "cache")
	return nil
}

// Results of a read, the values of the "result" label of
// switchyard_cache_requests_total.
const (
	ResultHit   = "hit"   // served from Redis, or from the process's copy (Config.Local)
	ResultMiss  = "miss"  // not in Redis: loaded, and filled
	ResultError = "error" // Redis failed or is cooling down after a failure, or the key's last write failed: loaded
)

// setIfNewer writes each entry only if its key holds no version or an
// older one. KEYS the keys; ARGV[1] the ttl in milliseconds, then a
// version and a value per key. Returns, per key, 1 if it wrote and 0 if the
// cached version is the same or newer. One run is one round trip for any
// number of keys (all in one Redis, not a cluster). Redis 7.0 commands only.
var setIfNewer = redis.NewScript(`
local wrote = {}
for i, key in ipairs(KEYS) do
  local v = ARGV[2*i]
  local cur = redis.call('HGET', key, 'v')
  if cur and tonumber(cur) >= tonumber(v) then
    wrote[i] = 0
  else
    redis.call('HSET', key, 'v', v, 'd', ARGV[2*i+1])
    redis.call('PEXPIRE', key, ARGV[1])
    wrote[i] = 1
  end
end
return wrote
`)

// Cache is a versioned read-through cache in Redis. It is safe for
// concurrent use.
type Cache struct {
	cfg    Config
	client *redis.Client

	downUntil atomic.Int64 // unix nanoseconds until which Redis is skipped
	streak    atomic.Int64 // Redis calls failed in a row
	lastLog   atomic.Int64 // unix nanoseconds of the last failure log line
	failures  atomic.Int64 // failures since that line

	mu      sync.Mutex
	flights map[string]*flight

	// stale holds the keys whose last write failed: Redis may hold an
	// older version than the one written. allStale is set (unix
	// nanoseconds, until then) when there were more than MaxStale.
	staleMu  sync.Mutex
	stale    map[string]staleMark
	allStale int64
	// staleUntil (unix nanoseconds) is when every mark has lapsed, 0 when
	// there is none: until then reads look at the marks; after it they
	// take no lock for them.
	staleUntil atomic.Int64

	requests *prometheus.CounterVec
	age      prometheus.Histogram

	local     *local             // nil unless Config.Local
	stopLocal context.CancelFunc // stops its listener
	listening chan struct{}      // closed when the listener has stopped
}

// staleMark is a key's write that failed: its version and when.
type staleMark struct {
	version int64
	at      time.Time
}

// flight is one shared load of a key.
type flight struct {
	done  chan struct{}
	entry Entry
	err   error
}

// New returns a cache; it does not contact Redis, so a Redis that is down
// at start only means reads go to the loader until it is up.
func New(cfg Config) (*Cache, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	opts, err := redis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	// The bounded timeout is the whole budget of a call: no retries, and
	// the context's deadline cuts reads and writes short.
	opts.MaxRetries = -1
	opts.DialTimeout = cfg.Timeout
	opts.ReadTimeout = cfg.Timeout
	opts.WriteTimeout = cfg.Timeout
	opts.PoolTimeout = cfg.Timeout
	opts.ContextTimeoutEnabled = true
	c := &Cache{
		cfg:     cfg,
		client:  redis.NewClient(opts),
		flights: map[string]*flight{},
		stale:   map[string]staleMark{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_cache_requests_total",
			Help: "Cache reads by result: hit (from Redis or the process's copy), miss (loaded and filled), error (Redis failed or cooling down, or the key's last write failed: loaded).",
		}, []string{"result"}),
		age: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchyard_cache_update_age_seconds",
			Help:    "Time from a change's commit to the moment the cache holds it, recorded once per version by the writer that brought it first.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
	}
	if cfg.Local {
		c.local = newLocal(cfg.Prefix, cfg.LocalTTL, cfg.LocalMax)
		ctx, cancel := context.WithCancel(context.Background())
		c.stopLocal, c.listening = cancel, make(chan struct{})
		go func() {
			defer close(c.listening)
			c.local.listen(ctx, opts, cfg.LocalPing)
		}()
	}
	return c, nil
}

// Close closes the connections to Redis.
func (c *Cache) Close() error {
	if c.local != nil {
		c.stopLocal()
		<-c.listening
	}
	return c.client.Close()
}

// Collectors returns the cache's Prometheus series, to register once per
// process: switchyard_cache_requests_total{result} and
// switchyard_cache_update_age_seconds.
func (c *Cache) Collectors() []prometheus.Collector {
	for _, r := range []string{ResultHit, ResultMiss, ResultError} {
		c.requests.WithLabelValues(r) // present at 0 before the first read
	}
	return []prometheus.Collector{c.requests, c.age}
}

// Get returns key's entry from Redis, or else from load. A miss shares one
// load with every concurrent miss of the key in this process and fills
// Redis with the loaded version unless a newer one is there. A failure of
// Redis is never returned: the entry comes from load. Errors of load are
// returned as they are.
func (c *Cache) Get(ctx context.Context, key string, load Loader) (Entry, error) {
	if c.isStale(key) {
		return c.load(ctx, key, load, ResultError, true)
	}
	if e, ok := c.local.get(key); ok {
		c.requests.WithLabelValues(ResultHit).Inc()
		return e, nil
	}
	result := ResultError
	if c.usable() {
		g := c.local.generation()
		e, ok, err := c.read(ctx, key)
		if err == nil {
			c.streak.Store(0)
		}
		switch {
		case err == nil && ok:
			c.requests.WithLabelValues(ResultHit).Inc()
			c.local.put(key, e, g)
			return e, nil
		case err == nil:
			result = ResultMiss
		case ctx.Err() != nil:
			return Entry{}, ctx.Err() // the caller gave up; Redis is not to blame
		default:
			c.failed("read", err)
		}
	}
	return c.load(ctx, key, load, result, result == ResultMiss)
}

// load joins or starts the key's shared load, counting the request as
// result while registered with it: a caller counted as a miss is sure to
// share the load in progress. A load started here fills Redis if fill.
func (c *Cache) load(ctx context.Context, key string, load Loader, result string, fill bool) (Entry, error) {
	c.mu.Lock()
	f := c.flights[key]
	if f == nil {
		f = &flight{done: make(chan struct{})}
		c.flights[key] = f
		go c.run(key, f, load, fill)
	}
	c.requests.WithLabelValues(result).Inc()
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.entry, f.err
	case <-ctx.Done():
		return Entry{}, ctx.Err()
	}
}

// run loads key once for every caller waiting on f and fills Redis.
func (c *Cache) run(key string, f *flight, load Loader, fill bool) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.LoadTimeout)
	defer cancel()
	f.entry, f.err = load(ctx)
	close(f.done)
	// The callers have their entry; filling is for the next ones. A fill
	// never overwrites a newer version, so a load that read an old row
	// and lost a race with an update leaves the update in place. Misses
	// meanwhile still join this flight rather than load again.
	if fill && f.err == nil && c.usable() {
		u := []Update{{Key: key, Entry: f.entry}}
		if _, err := c.write(ctx, u); err != nil {
			c.failed("fill", err)
		} else {
			c.streak.Store(0)
			c.clearStale(u)
		}
	}
	c.mu.Lock()
	if c.flights[key] == f { // not replaced since (see set)
		delete(c.flights, key)
	}
	c.mu.Unlock()
}

// Loading returns how many keys are being loaded (and filled) now.
func (c *Cache) Loading() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.flights)
}

// Set writes e under key unless Redis already holds the same or a newer
// version, atomically in Redis, and reports whether it wrote. A failure of
// Redis is returned (and counted for the cooldown), and so is
// ErrCoolingDown while Redis is skipped; either way this process reads the
// key from the loader until a later write goes through. Callers that
// only warm the cache may ignore the error.
func (c *Cache) Set(ctx context.Context, key string, e Entry) (bool, error) {
	n, err := c.set(ctx, []Update{{Key: key, Entry: e}}, time.Time{})
	return n == 1, err
}

// Update is a key's entry, for [Cache.ApplyAll].
type Update struct {
	// Key is the key without the prefix, as given to Get.
	Key string
	// Entry is what to write, if newer than what Redis holds.
	Entry Entry
}

// Apply is [Cache.Set] for a change committed at changed: if it writes e,
// it records the time since changed in switchyard_cache_update_age_seconds.
// A writer that does not know the commit's time passes an earlier one
// (an event's, taken in its transaction), which overstates the age.
// A version is recorded once, by whichever writer brings it first (a
// write-through after the commit, or the event's updater when that failed),
// so the histogram is how long changes take to reach the cache, not how
// late a second writer is.
func (c *Cache) Apply(ctx context.Context, key string, e Entry, changed time.Time) (bool, error) {
	n, err := c.set(ctx, []Update{{Key: key, Entry: e}}, changed)
	return n == 1, err
}

// ApplyAll is [Cache.Apply] for the changes of one transaction, in one
// round trip to Redis: each is written unless its key holds the same or a
// newer version. It returns how many it wrote.
func (c *Cache) ApplyAll(ctx context.Context, updates []Update, changed time.Time) (int, error) {
	return c.set(ctx, updates, changed)
}

// set writes updates newer than what Redis holds, counts a failure for
// the cooldown and records the age of what it wrote since changed (unless
// zero).
func (c *Cache) set(ctx context.Context, updates []Update, changed time.Time) (int, error) {
	if len(updates) == 0 {
		return 0, nil
	}
	// A load in progress may have read the row before this version: a
	// read from now on starts a load of its own rather than share it, so
	// that whoever wrote reads its write even while Redis is failing.
	c.mu.Lock()
	for _, u := range updates {
		delete(c.flights, u.Key)
	}
	c.mu.Unlock()
	// A Redis known to be failing is not waited for: the write is
	// remembered as failed at once.
	if !c.usable() {
		c.markStale(updates)
		return 0, ErrCoolingDown
	}
	wrote, err := c.write(ctx, updates)
	switch {
	case err == nil:
		c.streak.Store(0)
		c.clearStale(updates)
	case ctx.Err() == nil:
		c.failed("write", err)
		c.markStale(updates)
	default:
		c.markStale(updates)
	}
	if wrote > 0 && !changed.IsZero() {
		age := time.Since(changed).Seconds()
		for range wrote {
			c.age.Observe(age)
		}
	}
	return wrote, err
}

// Peek returns what Redis holds for key, with no fallback and no metrics:
// for checkers and tests that compare the cache with the database.
func (c *Cache) Peek(ctx context.Context, key string) (Entry, bool, error) {
	return c.read(ctx, key)
}

// read returns the entry of key and whether there is one.
func (c *Cache) read(ctx context.Context, key string) (Entry, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	vals, err := c.client.HMGet(ctx, c.cfg.Prefix+key, "v", "d").Result()
	if err != nil {
		return Entry{}, false, err
	}
	v, ok1 := vals[0].(string)
	d, ok2 := vals[1].(string)
	if !ok1 || !ok2 {
		return Entry{}, false, nil
	}
	version, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return Entry{}, false, fmt.Errorf("cache: key %s holds version %q", key, v)
	}
	return Entry{Version: version, Value: []byte(d)}, true, nil
}

// write runs setIfNewer and returns how many entries it wrote.
func (c *Cache) write(ctx context.Context, updates []Update) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	keys := make([]string, len(updates))
	args := make([]any, 1, 1+2*len(updates))
	args[0] = c.cfg.TTL.Milliseconds()
	for i, u := range updates {
		keys[i] = c.cfg.Prefix + u.Key
		args = append(args, u.Entry.Version, u.Entry.Value)
	}
	res, err := setIfNewer.Run(ctx, c.client, keys, args...).Int64Slice()
	// Whatever Redis did, this process reads its own writes from Redis
	// from now on rather than wait for the report of the change.
	c.local.drop(keys...)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, w := range res {
		n += int(w)
	}
	return n, nil
}

// ErrCoolingDown is returned by a write while Redis is skipped after
// failures (see Config.Cooldown).
var ErrCoolingDown = errors.New("cache: Redis is skipped after failures")

// markStale remembers that updates may not have reached Redis, and drops
// the process's copies of their keys.
func (c *Cache) markStale(updates []Update) {
	keys := make([]string, len(updates))
	now := time.Now()
	c.staleMu.Lock()
	for i, u := range updates {
		keys[i] = c.cfg.Prefix + u.Key
		if m, ok := c.stale[u.Key]; ok && m.version > u.Entry.Version {
			continue
		}
		if len(c.stale) >= c.cfg.MaxStale {
			maps.DeleteFunc(c.stale, func(_ string, m staleMark) bool { return c.lapsed(m, now) })
		}
		if len(c.stale) >= c.cfg.MaxStale {
			// Too many to remember one by one: none of Redis's entries
			// is trusted until every one written before now has expired.
			clear(c.stale)
			c.allStale = now.Add(2 * c.cfg.TTL).UnixNano()
		}
		c.stale[u.Key] = staleMark{version: u.Entry.Version, at: now}
	}
	c.staleUntil.Store(now.Add(2 * c.cfg.TTL).UnixNano())
	c.staleMu.Unlock()
	c.local.drop(keys...)
}

// lapsed reports whether m no longer matters at now: any entry Redis held
// before the failed write has expired.
func (c *Cache) lapsed(m staleMark, now time.Time) bool { return now.Sub(m.at) >= 2*c.cfg.TTL }

// clearStale forgets the failed writes that updates, now in Redis (or
// overtaken there by newer versions), supersede.
func (c *Cache) clearStale(updates []Update) {
	if time.Now().UnixNano() >= c.staleUntil.Load() {
		return
	}
	c.staleMu.Lock()
	defer c.staleMu.Unlock()
	for _, u := range updates {
		if m, ok := c.stale[u.Key]; ok && m.version <= u.Entry.Version {
			delete(c.stale, u.Key)
		}
	}
	c.noneStale(time.Now())
}

// noneStale clears staleUntil if no mark is left. Called with staleMu.
func (c *Cache) noneStale(now time.Time) {
	if len(c.stale) == 0 && now.UnixNano() >= c.allStale {
		c.staleUntil.Store(0)
	}
}

// isStale reports whether Redis may hold an older version of key than one
// this process wrote. A mark lapses after twice TTL: any entry Redis held
// before the failed write has expired by then.
func (c *Cache) isStale(key string) bool {
	now := time.Now()
	if now.UnixNano() >= c.staleUntil.Load() {
		return false
	}
	c.staleMu.Lock()
	defer c.staleMu.Unlock()
	if now.UnixNano() < c.allStale {
		return true
	}
	m, ok := c.stale[key]
	if ok && c.lapsed(m, now) {
		delete(c.stale, key)
		c.noneStale(now)
		return false
	}
	return ok
}

// usable reports whether Redis is to be tried (not cooling down after
// failures).
func (c *Cache) usable() bool { return time.Now().UnixNano() >= c.downUntil.Load() }

// failed starts a cooldown once SkipAfter calls in a row have failed, and
// logs, at most once per LogEvery, how many Redis calls failed since the
// last line.
func (c *Cache) failed(op string, err error) {
	now := time.Now()
	if c.streak.Add(1) >= int64(c.cfg.SkipAfter) {
		c.downUntil.Store(now.Add(c.cfg.Cooldown).UnixNano())
	}
	n := c.failures.Add(1)
	last := c.lastLog.Load()
	if now.UnixNano()-last < c.cfg.LogEvery.Nanoseconds() || !c.lastLog.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	c.failures.Add(-n)
	c.cfg.Logger.Warn("redis unavailable: serving from the source of truth", "op", op, "error", err, "failures", n, "retry_in", c.cfg.Cooldown)
}
