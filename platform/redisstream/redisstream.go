// Package redisstream carries Switchyard's events over Redis Streams, with
// the guarantees of [transport.Transport]: per-key order, acknowledgement
// only once Redis holds an entry, one owner per partition with fencing, and
// trimming that never drops what a group still needs. It needs Redis 7.0
// (Debian 12's) and nothing newer; Redis Cluster is not supported (the Lua
// scripts touch a lease key and a stream together).
//
// # Layout in Redis
//
// A topic is split into Config.Partitions streams, one per partition, named
// "<topic>:<partition>" (for example "switchyard.order:3"); a key's
// partition is [transport.Partition], Kafka's murmur2, so a key lands in the
// same partition on both transports. Each entry's fields are the message
// headers (CloudEvents attributes, traceparent/tracestate, content-type), in
// order, then "key" and "payload" (the raw protobuf bytes):
//
//	redis-cli XRANGE switchyard.order:3 - +
//
// Dead letters go to "<topic>:<partition>.dlq" with the same fields plus the
// consumer's extra headers. A consumer group "g" keeps, per topic:
//
//	g:members:<topic>           ZSET of live members, scored by expiry (ms, server clock)
//	g:lease:<topic>:<p>         the partition's lease: the owning claim's token, with a TTL
//	g:epoch:<topic>:<p>         the partition's fencing epoch counter
//
// and on each partition stream a Redis consumer group "g" with one consumer
// named "p<partition>", whoever owns the partition.
//
// # Publishing
//
// A publisher pipelines XADDs in batches (a batch is sent when it is full or
// a millisecond after its first message) from one goroutine, and runs each
// acknowledgement in order once Redis has replied to that XADD. Any error is
// fatal to the publisher ([transport.Publisher.Failed]); the caller resends
// from its last acknowledged message, so an entry may be written twice,
// never lost or reordered. A publisher or subscriber refuses a Redis whose
// maxmemory-policy is not noeviction (an evicted stream loses events). How
// durable an acknowledged entry is depends on Redis's append-only file:
// with appendfsync always (what the test kit, `make run` and the chart use)
// an acknowledged entry survives a kill -9 of Redis; with everysec up to a
// second of acknowledged entries can be lost; without the append-only file
// everything since the last snapshot. The transport logs a warning for the
// latter two.
//
// # Consuming
//
// Members of a group register in the members ZSET with a heartbeat (every
// LeaseTTL/5, at most every second). The assignment is computed by every
// member alike from the sorted live members: partition p belongs to member
// p mod n. A member owns a partition through its lease key, taken with SET
// NX PX LeaseTTL and refreshed on every heartbeat; taking it increments the
// epoch (never below the server's clock in ms, so it keeps growing even if
// Redis lost its data), which is the claim's [transport.Claim.Epoch]. A
// member gives up partitions that are no longer its own: it closes the
// claim's Messages, waits for the consume function up to RevokeTimeout,
// cancels the claim's context and then deletes the lease if it still holds
// it. A member that finds its lease taken, or cannot confirm it for a whole
// LeaseTTL, cancels the claim's context at once. A dead member's partitions
// are thus taken over within LeaseTTL plus one heartbeat.
//
// The owner reads with XREADGROUP as consumer "p<partition>": first that
// consumer's pending entries (the former owner's uncommitted ones, in
// order), then new ones. Every read and every XACK runs in a Lua script
// that first checks the lease, so a former owner that was paused past its
// lease can neither take entries away from the new owner nor acknowledge:
// Commit returns [transport.ErrFenced]. Waiting for new entries is a plain
// XREAD BLOCK of at most a second. A pending entry whose message was
// trimmed away is acknowledged and counted ([Stats].DroppedPending), never
// redelivered. [transport.Message].Deliveries is Redis's delivery count, so
// a message that keeps crashing its consumer can be dead-lettered.
//
// # Trimming
//
// Once per Config.MaintainInterval the transport trims each partition
// stream of the topics it has used with XTRIM MINID: never past the first
// pending entry or the last delivered entry of any group, and, with a
// Config.Retention, only entries older than it; with no retention (0)
// nothing is trimmed. A group that has work but has not advanced for
// Config.StallAfter is reported in a log line and in [Transport.Stats]: it
// holds back trimming, which is on purpose (its entries are not lost) but
// must not go unnoticed.
package redisstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchyard/switchyard/platform/transport"
)

// DefaultURL is the Redis of a local `make run`.
const DefaultURL = "redis://127.0.0.1:16379/0"

// Config configures a Redis Streams transport. URL is required.
type Config struct {
	// URL of the Redis server, e.g. redis://127.0.0.1:16379/0 (go-redis
	// URL options such as pool_size are honoured).
	URL string
	// Partitions is the number of partition streams per topic (default 6,
	// as Kafka's topics).
	Partitions int
	// LeaseTTL is how long a partition stays owned by a member that stopped
	// refreshing its lease (default 5s).
	LeaseTTL time.Duration
	// Retention is how long entries are kept for replay once every group
	// has processed them; 0 keeps them for ever (no trimming).
	Retention time.Duration
	// MaintainInterval is how often streams are trimmed and groups checked
	// (default 30s).
	MaintainInterval time.Duration
	// StallAfter is how long a group may have work without advancing before
	// it is reported as stalled (default 15m).
	StallAfter time.Duration
	// Logger receives the transport's logs (default slog.Default()).
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.URL == "" {
		return errors.New("redisstream: URL is required")
	}
	if c.Partitions <= 0 {
		c.Partitions = 6
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 5 * time.Second
	}
	if c.MaintainInterval <= 0 {
		c.MaintainInterval = 30 * time.Second
	}
	if c.StallAfter <= 0 {
		c.StallAfter = 15 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Transport is a [transport.Transport] on Redis Streams.
type Transport struct {
	cfg Config
	rdb *redis.Client
	log *slog.Logger

	warnOnce sync.Once

	mu      sync.Mutex
	topics  map[string]bool // topics used through this transport, trimmed by maintain
	counted map[string]bool // topics whose partition count EnsureTopics checked
	stats   Stats
	stall   map[string]*progress // by stream + "\x00" + group

	stop chan struct{}
	done chan struct{}
}

var _ transport.Transport = (*Transport)(nil)

// New returns a transport for cfg. It does not contact Redis: publishers,
// subscribers and Check do, and refuse an unsafe server.
func New(cfg Config) (*Transport, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	opts, err := redis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("redisstream: parse URL: %w", err)
	}
	// No silent retries: a retried XADD pipeline could write entries twice
	// out of order, and a retried XREADGROUP loses the reply that moved
	// entries into the pending list. Callers retry explicitly.
	opts.MaxRetries = -1
	opts.ContextTimeoutEnabled = true
	if opts.PoolSize == 0 {
		// Every owned partition waits on its own connection (XREAD BLOCK).
		opts.PoolSize = 128
	}
	t := &Transport{
		cfg:     cfg,
		rdb:     redis.NewClient(opts),
		log:     cfg.Logger.With("transport", "redis"),
		topics:  map[string]bool{},
		counted: map[string]bool{},
		stall:   map[string]*progress{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go t.maintainLoop()
	return t, nil
}

// System returns "redis".
func (t *Transport) System() string { return "redis" }

// EnsureTopics records the topics for trimming; streams need no creation
// (XADD creates them, and consumer groups are created by their members).
// It also records each topic's partition count in Redis
// ("<topic>:partitions") the first time, and refuses a count other than the
// recorded one with ErrPartitionsChanged, writing nothing: on Redis the
// count routes every key to its stream, so processes that disagree on it
// would put an aggregate's events in two streams (out of order) or in
// streams nobody reads. Publishers check each topic the same way before
// their first entry to it.
func (t *Transport) EnsureTopics(ctx context.Context, topics ...string) error {
	if len(topics) == 0 {
		return nil
	}
	keys := make([]string, len(topics))
	for i, topic := range topics {
		keys[i] = partitionsKey(topic)
	}
	want := strconv.Itoa(t.cfg.Partitions)
	res, err := partitionsScript.Run(ctx, t.rdb, keys, want).Result()
	if err != nil {
		return fmt.Errorf("record partition counts: %w", err)
	}
	if clash, ok := res.([]any); ok && len(clash) == 2 {
		i, _ := clash[0].(int64)
		got, _ := clash[1].(string)
		return fmt.Errorf("%w: topic %s has %s partitions on this Redis and this process is configured with %s (SWITCHYARD_TOPIC_PARTITIONS): set it back to %[3]s, or change it only as the README's \"Changing the partition count on Redis\" says",
			ErrPartitionsChanged, topics[i-1], got, want)
	}
	t.mu.Lock()
	for _, topic := range topics {
		t.topics[topic] = true
		t.counted[topic] = true
	}
	t.mu.Unlock()
	return nil
}

// counts reports whether EnsureTopics has checked topic's partition count.
func (t *Transport) counts(topic string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.counted[topic]
}

// ErrPartitionsChanged is returned (wrapped) by EnsureTopics when a topic's
// recorded partition count is not the transport's.
var ErrPartitionsChanged = errors.New("redis streams: partition count changed")

// partitionsKey is where a topic's partition count is recorded.
func partitionsKey(topic string) string { return topic + ":partitions" }

// Check pings Redis and verifies that it cannot evict keys.
func (t *Transport) Check(ctx context.Context) error {
	if err := t.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis ping: %w", err)
	}
	return t.checkServer(ctx)
}

// Close stops the maintenance loop and closes the connections.
func (t *Transport) Close() error {
	select {
	case <-t.stop:
	default:
		close(t.stop)
	}
	<-t.done
	return t.rdb.Close()
}

func (t *Transport) addTopics(topics ...string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, topic := range topics {
		t.topics[topic] = true
	}
}

// ErrEvictingServer is returned (wrapped) for a Redis whose maxmemory-policy
// lets it evict keys, streams included.
var ErrEvictingServer = errors.New("redis may evict keys (maxmemory-policy is not noeviction): stream entries could be lost; set maxmemory-policy noeviction")

// checkServer refuses a Redis that may evict keys and warns (once) about
// settings that can lose acknowledged entries in a crash.
func (t *Transport) checkServer(ctx context.Context) error {
	mem, err := t.rdb.Info(ctx, "memory").Result()
	if err != nil {
		return fmt.Errorf("redis INFO memory: %w", err)
	}
	if policy := infoField(mem, "maxmemory_policy"); policy != "noeviction" {
		return fmt.Errorf("redis at %s has maxmemory-policy %q: %w", t.rdb.Options().Addr, policy, ErrEvictingServer)
	}
	t.warnOnce.Do(func() {
		persistence, err := t.rdb.Info(ctx, "persistence").Result()
		if err == nil && infoField(persistence, "aof_enabled") != "1" {
			t.log.Warn("redis append-only file is off: acknowledged events are lost if Redis crashes; set appendonly yes and appendfsync always")
			return
		}
		fsync, err := t.rdb.ConfigGet(ctx, "appendfsync").Result()
		switch {
		case err != nil:
			t.log.Warn("cannot read redis appendfsync; acknowledged events survive a Redis crash only with appendfsync always", "err", err)
		case fsync["appendfsync"] != "always":
			t.log.Warn("redis appendfsync is not always: up to a second of acknowledged events can be lost if Redis crashes", "appendfsync", fsync["appendfsync"])
		}
	})
	return nil
}

// infoField returns the value of name in an INFO reply.
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// streamKey names the stream of one partition.
func streamKey(topic string, partition int32) string {
	return topic + ":" + strconv.Itoa(int(partition))
}

// consumerName is the Redis consumer that reads a partition, whoever owns
// it, so a new owner finds the former owner's pending entries as its own.
func consumerName(partition int32) string { return "p" + strconv.Itoa(int(partition)) }

func leaseKey(group, topic string, partition int32) string {
	return group + ":lease:" + streamKey(topic, partition)
}

func epochKey(group, topic string, partition int32) string {
	return group + ":epoch:" + streamKey(topic, partition)
}

func membersKey(group, topic string) string { return group + ":members:" + topic }

// entryFields returns m's stream entry fields: headers, then key and payload.
func entryFields(m *transport.Message, extra []transport.Header) ([]any, error) {
	values := make([]any, 0, 2*(len(m.Headers)+len(extra))+4)
	for _, hs := range [][]transport.Header{m.Headers, extra} {
		for _, h := range hs {
			if h.Key == fieldKey || h.Key == fieldPayload {
				return nil, fmt.Errorf("header %q: the name is reserved for the entry's own field", h.Key)
			}
			values = append(values, h.Key, h.Value)
		}
	}
	return append(values, fieldKey, m.Key, fieldPayload, m.Value), nil
}

// The entry fields that are not headers.
const (
	fieldKey     = "key"
	fieldPayload = "payload"
)

// compareIDs compares two stream entry ids ("ms-seq").
func compareIDs(a, b string) int {
	am, as := splitID(a)
	bm, bs := splitID(b)
	switch {
	case am != bm:
		return cmpUint(am, bm)
	default:
		return cmpUint(as, bs)
	}
}

// validID reports whether id is a complete entry id ("ms-seq").
func validID(id string) bool {
	msPart, seqPart, ok := strings.Cut(id, "-")
	_, err1 := strconv.ParseUint(msPart, 10, 64)
	_, err2 := strconv.ParseUint(seqPart, 10, 64)
	return ok && err1 == nil && err2 == nil
}

// isNoSuchKey reports whether err is Redis saying the stream does not exist.
func isNoSuchKey(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no such key")
}

func splitID(id string) (ms, seq uint64) {
	msPart, seqPart, _ := strings.Cut(id, "-")
	ms, _ = strconv.ParseUint(msPart, 10, 64)
	seq, _ = strconv.ParseUint(seqPart, 10, 64)
	return ms, seq
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
