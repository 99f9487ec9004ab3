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
// active one's connection goes away. Events reach Kafka at least once and in
// commit order per aggregate; after a crash, events published but not yet
// confirmed are sent again, which the idempotent consumer absorbs.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
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
		c.Slot = slotName(pcfg.Database)
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
	published    atomic.Uint64
	failures     atomic.Uint64
	pendingSince atomic.Int64 // unix nanos of the oldest unacknowledged event; 0 when none
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

// ErrLogicalReplicationOff is returned (wrapped) by cdc mode when the
// database does not have wal_level=logical.
var ErrLogicalReplicationOff = errors.New("PostgreSQL wal_level is not 'logical': " +
	"set wal_level=logical (and max_replication_slots, max_wal_senders > 0) and restart PostgreSQL, " +
	"or use the poll relay mode")

// slotName derives a valid slot name (lower-case letters, digits and
// underscores, at most 63 bytes) from a database name.
func slotName(database string) string {
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

// Stats returns the relay's counters.
func (r *Relay) Stats() Stats {
	s := Stats{Active: r.active.Load(), Published: r.published.Load(), Failures: r.failures.Load()}
	if since := r.pendingSince.Load(); since != 0 {
		s.OldestPendingAge = time.Since(time.Unix(0, since))
	}
	return s
}

// Run relays events until ctx is cancelled, as the active relay or as a
// standby waiting to take over. Transient failures (database or broker
// restarts) are logged and retried. It returns nil after a clean stop, or an
// error that retrying cannot fix (such as ErrLogicalReplicationOff).
func (r *Relay) Run(ctx context.Context) error {
	log := r.cfg.Logger
	standbyLogged := false
	for {
		err := r.term(ctx)
		r.active.Store(false)
		r.pendingSince.Store(0)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.As(err, new(permanent)):
			return err
		case errors.Is(err, errStandby):
			if !standbyLogged {
				log.Info("standing by: another relay is active on this database")
				standbyLogged = true
			}
		case err != nil:
			r.failures.Add(1)
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
