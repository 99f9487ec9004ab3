package consumer

import (
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchyard/switchyard/platform/transport"
)

// Config configures a consumer. Transport, Group and Pool are required,
// and Topics or TopicPrefix.
type Config struct {
	// Transport is where events are read (Kafka or Redis Streams).
	Transport transport.Transport
	// Group is the consumer group; it also scopes the inbox.
	Group string
	// Topics to subscribe to, in addition to those TopicPrefix derives.
	Topics []string
	// TopicPrefix, when set, subscribes the consumer to the topic of the
	// aggregate each handled event type declares (option
	// (switchyard.event.v1.aggregate), see package eventpb): TopicPrefix +
	// aggregate, so a handler and the topic its events come on cannot
	// disagree. See [Consumer.Topics].
	TopicPrefix string
	// Pool is the database the handlers change.
	Pool *pgxpool.Pool
	// MaxAttempts is how often a failing message is tried before it goes to
	// the dead-letter destination (default 5).
	MaxAttempts int
	// MaxDeliveries is a backstop against poison loops on transports that
	// count deliveries (Redis): a message handed out this often (across
	// crashes of its consumers) is dead-lettered without another try
	// (default 50).
	MaxDeliveries int64
	// Backoff is the pause after the first failure, doubled after each
	// further one up to MaxBackoff (defaults 100ms and 5s).
	Backoff    time.Duration
	MaxBackoff time.Duration // upper bound of the doubling Backoff
	// InboxRetention is how long inbox rows are kept (default 7 days).
	// Events written longer ago than this are dead-lettered instead of
	// applied, since the inbox can no longer tell whether they were.
	InboxRetention time.Duration
	// PruneInterval is how often old inbox rows are deleted (default 1h).
	PruneInterval time.Duration
	// RevokeTimeout is how long, on a rebalance, the partitions taken away
	// may take in total to finish their current event before they are
	// cancelled and left to their next owners (default 10s): a handler
	// stuck retrying through a database outage must not stall the group.
	RevokeTimeout time.Duration
	// MaxBatch bounds how many events that have arrived on a partition
	// are applied in one transaction (default 256). At low load a batch is
	// one event; a batch that fails is applied again one event per
	// transaction, so a poison event is still isolated.
	MaxBatch int
	// BatchLockTimeout bounds how long a batch of several events waits for
	// a row lock another transaction holds (default 100ms). A batch holds
	// the locks of many events at once; when partitions share rows (stock
	// of the same products, say), batches waiting on each other form
	// convoys and deadlocks that PostgreSQL breaks only after its
	// deadlock_timeout (1 s). Past the bound the batch yields: it rolls
	// back and applies its events one per transaction, which wait as long
	// as they must.
	BatchLockTimeout time.Duration
	// HoldPackages lists protobuf packages (for example
	// "switchyard.inventory.v1") whose messages are commands addressed to
	// this group. An event of a type in one of them that this build does
	// not know comes from a newer producer (a rolling upgrade): the
	// partition waits at it, retrying with backoff, until a build that
	// knows it takes over, so the command is not lost. Unknown types of
	// other packages, and known types without a handler, are skipped and
	// counted. The service skeleton sets the service's own package.
	HoldPackages []string
	// Logger receives the consumer's logs (default slog.Default()).
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	switch {
	case c.Transport == nil:
		return errors.New("consumer: Transport is required")
	case c.Group == "":
		return errors.New("consumer: Group is required")
	case len(c.Topics) == 0 && c.TopicPrefix == "":
		return errors.New("consumer: Topics or TopicPrefix is required")
	case c.Pool == nil:
		return errors.New("consumer: Pool is required")
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.MaxDeliveries <= 0 {
		c.MaxDeliveries = 50
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 256
	}
	if c.BatchLockTimeout <= 0 {
		c.BatchLockTimeout = 100 * time.Millisecond
	}
	if c.Backoff <= 0 {
		c.Backoff = 100 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Second
	}
	if c.InboxRetention <= 0 {
		c.InboxRetention = 7 * 24 * time.Hour
	}
	if c.PruneInterval <= 0 {
		c.PruneInterval = time.Hour
	}
	if c.RevokeTimeout <= 0 {
		c.RevokeTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("component", "consumer", "group", c.Group)
	return nil
}
