// Package relay moves committed outbox events to the transport (Kafka or
// Redis Streams; see package transport).
//
// Two modes sit behind one [Relay]:
//
//   - [outbox.ModeCDC] (default) streams the outbox inserts from PostgreSQL's
//     write-ahead log through logical replication (pgoutput, a publication on
//     the outbox table, one replication slot per database), the way Debezium
//     does. The slot's position is confirmed only up to the end of the last
//     transaction whose events Kafka has all acknowledged.
//   - [outbox.ModePoll] reads rows with SELECT ... FOR UPDATE SKIP LOCKED and
//     deletes them once Kafka has acknowledged them, for databases without
//     logical replication.
//
// Either way there is exactly one active relay per database: the replication
// slot (cdc) or a session advisory lock (poll) admits one, and the others wait
// as standbys, retrying every [Config.RetryInterval], and take over when the
// active one's connection goes away. Events reach Kafka at least once; after
// a crash, events published but not yet confirmed are sent again, which the
// idempotent consumer absorbs.
//
// Visibility: cdc reads a commit from the write-ahead log a moment before
// PostgreSQL lets other sessions see it, and holds the transaction's events
// (and everything after them) until a snapshot shows it finished, so whoever
// has an event can read its writer's changes on the primary.
//
// Order: cdc publishes in commit order, so each aggregate's events arrive in
// the order their transactions committed, whatever the writers do. Poll
// publishes in insert order (the outbox's seq), which is commit order per
// aggregate only when the aggregate's writers serialize: each locks the
// aggregate's row (SELECT ... FOR UPDATE, or an UPDATE of it) before writing
// its event and holds it to commit. Two transactions that write events for
// one aggregate without such a lock can commit in the opposite order of
// their inserts, and the poll relay may then publish the later commit first.
//
// A relay that cannot publish (the broker refuses an event, or stays
// unreachable) does not skip anything: it retries, and says so through
// [Relay.Stats] and [Relay.Check] (for a health check), its metrics and an
// error log line once it has been failing for [Config.StuckAfter].
//
// In cdc mode, [Relay.Prepare] records in the table relay_slots that it
// created the database's slot. If that slot later disappears (dropped, or
// not carried over by a fail-over), the events committed since were never
// relayed, and a new slot would start after them: the relay refuses to
// recreate it and stops with [ErrSlotLost], which says how to recover.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/transport"
)

// Config configures a relay. DatabaseURL and Transport are required.
type Config struct {
	// Mode is cdc (default) or poll.
	Mode outbox.Mode
	// DatabaseURL is the database whose outbox is relayed.
	DatabaseURL string
	// Transport is where events are published (Kafka or Redis Streams).
	Transport transport.Transport
	// TopicPrefix is prepended to the aggregate type to name the topic.
	TopicPrefix string
	// Source is the CloudEvents ce_source of every event (default
	// "/switchyard/<database name>").
	Source string
	// Slot is the replication slot name (cdc; default "switchyard_<database
	// name>": slot names are unique across a PostgreSQL cluster, so services
	// sharing a cluster each get their own). In poll mode it names the
	// advisory lock.
	Slot string
	// Publication is the publication name (cdc; default "switchyard_outbox").
	Publication string
	// StatusInterval is how often progress is confirmed to PostgreSQL
	// (cdc; default 1s).
	StatusInterval time.Duration
	// PollInterval is how long an idle poll relay waits before looking
	// again (poll; default 100ms).
	PollInterval time.Duration
	// BatchSize is how many rows a poll relay publishes per transaction
	// (poll; default 1000).
	BatchSize int
	// RetryInterval is how often a standby checks whether it can become
	// active, and the pause after an error (default 1s).
	RetryInterval time.Duration
	// ShutdownTimeout bounds how long a stopping relay waits for Kafka to
	// acknowledge what it has sent (default 10s). Unacknowledged events are
	// not confirmed and are sent again by the next active relay.
	ShutdownTimeout time.Duration
	// StuckAfter is how long a relay may fail to publish (every term
	// failing, events waiting that long for the broker's acknowledgement,
	// or, in cdc, a transaction held back that long because other sessions
	// cannot see it yet) before [Relay.Check] reports it stuck and it logs
	// an error (default 30s). Broker restarts and fail-overs usually take
	// less.
	StuckAfter time.Duration
	// Logger receives the relay's logs (default slog.Default()).
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.DatabaseURL == "" {
		return errors.New("relay: DatabaseURL is required")
	}
	if c.Transport == nil {
		return errors.New("relay: Transport is required")
	}
	mode, err := outbox.ParseMode(string(c.Mode))
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	c.Mode = mode
	pcfg, err := pgx.ParseConfig(c.DatabaseURL)
	if err != nil {
		return fmt.Errorf("relay: parse DatabaseURL: %w", err)
	}
	if c.Source == "" {
		c.Source = "/switchyard/" + pcfg.Database
	}
	if c.Slot == "" {
		c.Slot = SlotName(pcfg.Database)
	}
	if c.Publication == "" {
		c.Publication = "switchyard_outbox"
	}
	if c.StatusInterval <= 0 {
		c.StatusInterval = time.Second
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 100 * time.Millisecond
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 1000
	}
	if c.RetryInterval <= 0 {
		c.RetryInterval = time.Second
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.StuckAfter <= 0 {
		c.StuckAfter = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("component", "relay", "mode", string(c.Mode))
	return nil
}

// Relay publishes one database's outbox to Kafka. Create it with [New] and
// call [Relay.Run].
type Relay struct {
	cfg Config
	src source

	prepared     atomic.Bool // slot, publication and table exist; standbys need not look again
	active       atomic.Bool
	activeSince  atomic.Int64 // unix nanos when this term became active
	published    atomic.Uint64
	failures     atomic.Uint64
	pendingSince atomic.Int64 // unix nanos of the oldest unacknowledged event; 0 when none
	lastAck      atomic.Int64 // unix nanos of the last acknowledgement
	// cdc: the highest LSN found safe to confirm, and the highest commit LSN
	// seen, across terms: re-sending what an earlier term sent is not
	// progress, and a keepalive is "caught up" only past everything seen.
	cdcSafe atomic.Uint64
	cdcSeen atomic.Uint64
	// cdc: transactions read before they were visible; the one held now,
	// and since when (unix nanos; 0 when none is).
	invisibleWaits atomic.Uint64
	invisibleNanos atomic.Int64 // their holds' total duration
	invisibleXid   atomic.Uint32
	invisibleSince atomic.Int64

	mu           sync.Mutex
	lastErr      error     // the error that ended the last failed term
	lastErrAt    time.Time // when
	failingSince time.Time // first failure since the relay last made progress; zero when not failing
}

// Stats is a snapshot of a relay's counters.
type Stats struct {
	// Active is true while this relay holds the slot or lock and publishes.
	Active bool
	// Published counts events Kafka acknowledged.
	Published uint64
	// Failures counts terms that ended in an error (then retried).
	Failures uint64
	// OldestPendingAge is the age of the oldest event read from the outbox
	// and not yet acknowledged by Kafka; 0 when none.
	OldestPendingAge time.Duration
	// LastError is the error that ended the last failed term (nil if none
	// did), kept after the relay recovers.
	LastError error
	// LastErrorTime is when LastError happened.
	LastErrorTime time.Time
	// FailingSince is when the relay's terms started failing without the
	// relay making progress in between (publishing events it had not
	// published before, or catching up); zero while it is not failing.
	FailingSince time.Time
	// Stuck is true once the relay has been failing for Config.StuckAfter,
	// or has been waiting that long for the broker to acknowledge anything
	// while events are pending: events are not reaching the broker.
	Stuck bool
	// StuckReason says why Stuck is true; empty otherwise.
	StuckReason string
	// InvisibleWaits counts transactions (cdc) whose commit the relay read
	// from the write-ahead log before PostgreSQL made them visible to other
	// sessions, and which it held back, with everything after them, until
	// it did: a commit waiting for a synchronous standby, or one whose
	// backend was descheduled for a moment (which is common on a busy
	// machine, and harmless; Stuck says when one is held too long).
	InvisibleWaits uint64
	// InvisibleWaitTime is how long those transactions were held back, in
	// all: what waiting for visibility added to the relay's latency.
	InvisibleWaitTime time.Duration
}

// source is one way of reading the outbox: prepare creates what it reads
// from; run runs one term as the active relay until ctx ends or something
// fails, and returns errStandby when another relay is active.
type source interface {
	prepare(ctx context.Context, cfg *Config) error
	run(ctx context.Context, r *Relay) error
}

// errStandby means another relay is active on this database.
var errStandby = errors.New("another relay is active")

// ErrStuck is returned (wrapped, with the reason) by [Relay.Check] for a
// relay that cannot publish.
var ErrStuck = errors.New("relay cannot publish")

// ErrSlotLost is returned (wrapped) by cdc mode when the database's
// replication slot, which an earlier [Relay.Prepare] created and recorded in
// the table relay_slots, no longer exists: it was dropped, or a fail-over
// promoted a server without it. The events committed since it disappeared
// were never relayed, and a new slot would start after them, so the relay
// does not create one. The error says how to recover: publish again what
// consumers missed (or accept the gap), then acknowledge with
//
//	DELETE FROM relay_slots WHERE slot_name = '<slot>';
//
// after which the next Prepare creates and records a new slot.
var ErrSlotLost = errors.New("replication slot lost")

// ErrSynchronousStandby is returned (wrapped) by cdc mode when
// synchronous_standby_names names the relay's replication connection
// (application_name "switchyard-relay"), or '*', so that commits may wait
// for it. The relay confirms a commit only once it has published it, and
// publishes it only once other sessions can see it, which they cannot
// until the wait ends: a commit that waits for the relay would wait
// forever, and so would the relay. The relay checks when it becomes
// active, and again while it holds back a commit. Name the real standbys in
// synchronous_standby_names instead.
var ErrSynchronousStandby = errors.New("synchronous_standby_names names the relay ('switchyard-relay', or '*'), so commits may wait for it, " +
	"while it publishes only commits other sessions can see, which would never happen: name the real standbys in synchronous_standby_names instead")

// ErrPublicationIncomplete is returned (wrapped) by cdc mode when the
// publication exists but does not publish the outbox table's inserts: the
// table was dropped and created again (which takes it out of the
// publication), or the publication was altered. The relay would stream
// nothing while writers delete their rows, losing every event: it refuses
// to start instead. The error names the statements that repair the
// publication; events written while it was incomplete were not published
// and are gone from the outbox.
var ErrPublicationIncomplete = errors.New("the publication does not publish the outbox's inserts")

// ErrLogicalReplicationOff is returned (wrapped) by cdc mode when the
// database does not have wal_level=logical.
var ErrLogicalReplicationOff = errors.New("PostgreSQL wal_level is not 'logical': " +
	"set wal_level=logical (and max_replication_slots, max_wal_senders > 0) and restart PostgreSQL, " +
	"or use the poll relay mode")

// connect opens a plain connection to databaseURL, which may carry
// pgxpool's settings (pool_max_conns, ...): a service's URL usually does.
// The poll relay's lock lives on such a connection, and PostgreSQL
// releases it only once the session ends: the session is told to probe an
// idle client and give up on one that does not answer (lockKeepalive), so
// that a relay whose host died or whose network path was dropped leaves
// the lock to a standby in about half a minute, not after the two hours
// and more of the operating system's defaults. They are set after
// connecting rather than as startup parameters, which a connection pooler
// such as PgBouncer refuses; settings the URL gives win.
func connect(ctx context.Context, databaseURL string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse DatabaseURL: %w", err)
	}
	dropPoolParams(cfg.RuntimeParams)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	var set []string
	for _, kv := range lockKeepalive {
		if _, given := cfg.RuntimeParams[kv[0]]; !given && !strings.Contains(cfg.RuntimeParams["options"], kv[0]) {
			set = append(set, "SET "+kv[0]+" = "+kv[1])
		}
	}
	if len(set) > 0 {
		if _, err := conn.Exec(ctx, strings.Join(set, "; ")); err != nil {
			conn.Close(context.Background())
			return nil, fmt.Errorf("set TCP keepalives: %w", err)
		}
	}
	return conn, nil
}

// lockKeepalive is how the server side of a relay's plain connection
// notices a client gone silently: a probe after 10 s idle, then every 5 s,
// and the session ends once data or probes have gone unacknowledged for
// 30 s (tcp_user_timeout, which on Linux takes over from the count).
var lockKeepalive = [][2]string{
	{"tcp_keepalives_idle", "10"},
	{"tcp_keepalives_interval", "5"},
	{"tcp_keepalives_count", "3"},
	{"tcp_user_timeout", "30000"},
}

// dropPoolParams removes pgxpool's settings, which a single connection
// would send to the server as unknown parameters (FATAL: unrecognized
// configuration parameter "pool_max_conns").
func dropPoolParams(params map[string]string) {
	for k := range params {
		if strings.HasPrefix(k, "pool_") {
			delete(params, k)
		}
	}
}

// SlotName is the replication slot a cdc relay of database reads unless
// Config.Slot says otherwise: a valid slot name (lower-case letters, digits
// and underscores, at most 63 bytes) derived from the database's name.
func SlotName(database string) string {
	var b strings.Builder
	b.WriteString("switchyard_")
	for _, r := range strings.ToLower(database) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	name := b.String()
	if len(name) > 63 {
		name = name[:63]
	}
	return name
}

// permanent marks an error that retrying cannot fix; Run returns it.
type permanent struct{ error }

// IsPermanent reports whether err (from [Relay.Prepare] or [Relay.Run]) is
// one that retrying cannot fix: an operator must act, and the error says
// how.
func IsPermanent(err error) bool {
	var p permanent
	return errors.As(err, &p)
}

func (p permanent) Unwrap() error { return p.error }

// New validates cfg and returns a relay.
func New(cfg Config) (*Relay, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	r := &Relay{cfg: cfg}
	switch cfg.Mode {
	case outbox.ModeCDC:
		r.src = &cdcSource{}
	case outbox.ModePoll:
		r.src = &pollSource{}
	}
	return r, nil
}

// Prepare creates what the relay reads from if it is missing: the outbox
// table and, in cdc mode, the publication and the replication slot. A service
// must call it before it writes its first event: the slot only sees
// transactions that commit after it was created. [Relay.Run] calls it too.
func (r *Relay) Prepare(ctx context.Context) error {
	if err := r.src.prepare(ctx, &r.cfg); err != nil {
		return fmt.Errorf("relay: prepare: %w", err)
	}
	r.prepared.Store(true)
	return nil
}

// term runs one term as the active relay (or finds it must stand by),
// preparing first unless that was already done. A standby retries every
// RetryInterval; it re-checks the plumbing only after a real failure.
func (r *Relay) term(ctx context.Context) error {
	if !r.prepared.Load() {
		if err := r.src.prepare(ctx, &r.cfg); err != nil {
			return err
		}
		r.prepared.Store(true)
	}
	err := r.src.run(ctx, r)
	if err != nil && !errors.Is(err, errStandby) {
		r.prepared.Store(false)
	}
	return err
}

// Slot returns the replication slot the relay reads (cdc), or "" (poll).
func (r *Relay) Slot() string {
	if r.cfg.Mode == outbox.ModeCDC {
		return r.cfg.Slot
	}
	return ""
}

// Stats returns the relay's counters and health.
func (r *Relay) Stats() Stats {
	now := time.Now()
	s := Stats{Active: r.active.Load(), Published: r.published.Load(), Failures: r.failures.Load(),
		InvisibleWaits: r.invisibleWaits.Load(), InvisibleWaitTime: time.Duration(r.invisibleNanos.Load())}
	since := r.pendingSince.Load()
	if since != 0 {
		s.OldestPendingAge = now.Sub(time.Unix(0, since))
	}
	invisible := r.invisibleSince.Load()
	r.mu.Lock()
	s.LastError, s.LastErrorTime, s.FailingSince = r.lastErr, r.lastErrAt, r.failingSince
	r.mu.Unlock()
	switch {
	case s.Active && invisible != 0 && now.Sub(time.Unix(0, invisible)) >= r.cfg.StuckAfter:
		xid := r.invisibleXid.Load()
		s.Stuck = true
		s.StuckReason = fmt.Sprintf("transaction %d, committed in the write-ahead log, has been held back for %s because other sessions "+
			"cannot see it yet, and its events and every later one wait for it: is its commit waiting for a synchronous standby? "+
			"(SELECT pid, wait_event FROM pg_stat_activity WHERE backend_xid = '%d')",
			xid, now.Sub(time.Unix(0, invisible)).Round(time.Second), xid)
	case !s.FailingSince.IsZero() && now.Sub(s.FailingSince) >= r.cfg.StuckAfter:
		s.Stuck = true
		s.StuckReason = fmt.Sprintf("every attempt to publish has failed for %s (%d failed terms in all); last error: %v",
			now.Sub(s.FailingSince).Round(time.Second), s.Failures, s.LastError)
	case s.Active && since != 0:
		waiting := time.Unix(0, max(r.lastAck.Load(), r.activeSince.Load()))
		if d := now.Sub(waiting); d >= r.cfg.StuckAfter {
			s.Stuck = true
			s.StuckReason = fmt.Sprintf("the broker has acknowledged nothing for %s while events wait (the oldest is %s old)",
				d.Round(time.Second), s.OldestPendingAge.Round(time.Second))
		}
	}
	return s
}

// Check returns nil while the relay publishes (or stands by), and an error
// wrapping [ErrStuck] that says why once it has been unable to publish for
// Config.StuckAfter. A readiness check can report it: events written now
// will not reach consumers until the cause is fixed.
func (r *Relay) Check() error {
	if s := r.Stats(); s.Stuck {
		return fmt.Errorf("%w: %s", ErrStuck, s.StuckReason)
	}
	return nil
}

// becameActive marks the start of an active term.
func (r *Relay) becameActive() {
	r.activeSince.Store(time.Now().UnixNano())
	r.active.Store(true)
}

// acked records an acknowledgement from the broker.
func (r *Relay) acked() { r.lastAck.Store(time.Now().UnixNano()) }

// progressed records that the relay published events it had not published
// before, or caught up: it is not failing any more.
func (r *Relay) progressed() {
	r.mu.Lock()
	r.failingSince = time.Time{}
	r.mu.Unlock()
}

// termFailed records the error that ended a term.
func (r *Relay) termFailed(err error) {
	r.failures.Add(1)
	now := time.Now()
	r.mu.Lock()
	r.lastErr, r.lastErrAt = err, now
	if r.failingSince.IsZero() {
		r.failingSince = now
	}
	r.mu.Unlock()
}

// watch logs when the relay becomes stuck and when it recovers, until ctx
// ends.
func (r *Relay) watch(ctx context.Context) {
	log := r.cfg.Logger
	interval := min(r.cfg.StuckAfter/2, 5*time.Second)
	stuck := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		s := r.Stats()
		switch {
		case s.Stuck && !stuck:
			log.Error("relay stuck: events are not reaching the broker; nothing is skipped, it keeps retrying",
				"reason", s.StuckReason, "oldest_pending_age", s.OldestPendingAge)
		case !s.Stuck && stuck:
			log.Info("relay publishing again")
		}
		stuck = s.Stuck
	}
}

// Run relays events until ctx is cancelled, as the active relay or as a
// standby waiting to take over. Transient failures (database or broker
// restarts) are logged and retried. It returns nil after a clean stop, or an
// error that retrying cannot fix (such as ErrLogicalReplicationOff or
// ErrSynchronousStandby).
func (r *Relay) Run(ctx context.Context) error {
	log := r.cfg.Logger
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go r.watch(wctx)
	standbyLogged := false
	for {
		err := r.term(ctx)
		r.active.Store(false)
		r.pendingSince.Store(0)
		r.invisibleSince.Store(0)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.As(err, new(permanent)):
			r.termFailed(err)
			log.Error("relay stopped", "error", err)
			return err
		case errors.Is(err, errStandby):
			r.progressed() // another relay publishes: this one is not failing
			if !standbyLogged {
				log.Info("standing by: another relay is active on this database")
				standbyLogged = true
			}
		case err != nil:
			r.termFailed(err)
			standbyLogged = false
			log.Warn("relay term ended; retrying", "error", err, "retry_in", r.cfg.RetryInterval)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(r.cfg.RetryInterval):
		}
	}
}

// publishError names the event the transport refused to queue, so that the
// error (in Stats.LastError and the log) says which event holds the relay.
func publishError(rec outbox.Record, err error) error {
	return fmt.Errorf("publish event %s (%s of %s %q, %d payload bytes): %w",
		rec.ID, rec.Type, rec.AggregateType, rec.AggregateID, len(rec.Payload), err)
}
