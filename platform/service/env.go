package service

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"

	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/telemetry"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/watch"
)

// Env is what Setup gets: the service's shared resources.
type Env struct {
	Name     string             // the service's name
	Config   Config             // its configuration
	Pool     *pgxpool.Pool      // its database
	Outbox   *outbox.Writer     // writes events in the caller's transaction
	Server   *grpc.Server       // register gRPC services here
	Consumer *consumer.Consumer // register event handlers here; it reads the topics of their events' aggregates and runs if it has any
	Logger   *slog.Logger       // structured logs carrying the service name (and trace ids, given a context)
	Metrics  *telemetry.Metrics // register the service's own Prometheus series on Metrics.Registry

	stopping   chan struct{}
	background []func(context.Context) error
	watchPool  *pgxpool.Pool
	watchLimit *watch.Limit
	transport  transport.Transport
	consumers  []*consumer.Consumer // Consumer first
	topics     []string             // what the consumers read, created at bootstrap (set after Setup)
}

// Topic returns the topic of an aggregate type.
func (e *Env) Topic(aggregateType string) string { return e.Config.TopicPrefix + aggregateType }

// AddConsumer returns a consumer of a group of its own reading the topics
// of the aggregates its handled event types declare (and of
// aggregateTypes, for types that declare none), for work whose progress must not be tied to the
// service's own group: a projection or a cache that can be rebuilt by
// resetting its group's offsets, which must never replay the service's
// commands. Its topics are created at bootstrap, it starts with the
// service's own consumer and exports the same metrics (labelled with its
// group). Unknown event types are skipped, never held (see
// consumer.Config.HoldPackages): such a group reads events, not commands.
// Call it from Setup and register handlers on the result.
func (e *Env) AddConsumer(group string, aggregateTypes ...string) (*consumer.Consumer, error) {
	return e.addConsumer(group, aggregateTypes, nil)
}

func (e *Env) addConsumer(group string, aggregateTypes, holdPackages []string) (*consumer.Consumer, error) {
	topics := make([]string, len(aggregateTypes))
	for i, a := range aggregateTypes {
		topics[i] = e.Topic(a)
	}
	c, err := consumer.New(consumer.Config{Transport: e.transport, Group: group, Topics: topics, TopicPrefix: e.Config.TopicPrefix,
		Pool: e.Pool, Logger: e.Logger, HoldPackages: holdPackages})
	if err != nil {
		return nil, fmt.Errorf("consumer group %s: %w", group, err)
	}
	e.consumers = append(e.consumers, c)
	return c, nil
}

// settleConsumers runs after Setup, once every handler is registered: it
// drops the service's own consumer if nothing was registered on it, fails
// for a consumer with nothing to read, and collects the topics to create.
func (e *Env) settleConsumers() error {
	var keep []*consumer.Consumer
	for _, c := range e.consumers {
		if c == e.Consumer && len(c.Handles()) == 0 && len(c.Topics()) == 0 {
			continue
		}
		if len(c.Topics()) == 0 {
			return fmt.Errorf("consumer group %s handles %v, whose types declare no aggregate (option (switchyard.event.v1.aggregate)): declare it, or name the aggregates (Spec.Subscribe for the service's own group, the aggregateTypes of AddConsumer or NewConsumer for others)", c.Group(), c.Handles())
		}
		keep = append(keep, c)
		for _, t := range c.Topics() {
			// Listed once: librdkafka crashes on a CreateTopics that names
			// a topic twice.
			if !slices.Contains(e.topics, t) {
				e.topics = append(e.topics, t)
			}
		}
	}
	e.consumers = keep
	return nil
}

// NewConsumer returns a consumer of the service's database in a group of
// its own, reading the topics of its handled event types' aggregates (and
// of aggregateTypes, for types that declare none), that the service
// neither starts nor registers: unlike
// [Env.AddConsumer], for work that runs on demand, such as a replay into
// new tables, and must neither share nor disturb the other groups'
// positions. A new group starts at the earliest retained event. Its topics
// must be ones the service's consumers read (they are created at
// bootstrap). tune, if not nil, adjusts the configuration (batch size,
// inbox retention...). Register handlers, then run it with
// [Env.RunConsumer].
func (e *Env) NewConsumer(group string, aggregateTypes []string, tune func(*consumer.Config)) (*consumer.Consumer, error) {
	topics := make([]string, len(aggregateTypes))
	for i, a := range aggregateTypes {
		topics[i] = e.Topic(a)
	}
	cfg := consumer.Config{Transport: e.transport, Group: group, Topics: topics, TopicPrefix: e.Config.TopicPrefix, Pool: e.Pool, Logger: e.Logger}
	if tune != nil {
		tune(&cfg)
	}
	c, err := consumer.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("consumer group %s: %w", group, err)
	}
	return c, nil
}

// RunConsumer runs a consumer made by [Env.NewConsumer] until ctx ends
// (see [consumer.Consumer.Run]); while it runs, its lag and buffered
// messages are exported (switchyard_consumer_lag_messages and
// switchyard_consumer_buffered_messages) with its group.
func (e *Env) RunConsumer(ctx context.Context, c *consumer.Consumer) error {
	untrack := e.Metrics.TrackLag(c)
	defer untrack()
	return c.Run(ctx)
}

// Ends returns where the topics c reads end now (see
// [transport.Transport.Ends]).
func (e *Env) Ends(ctx context.Context, c *consumer.Consumer) (transport.Ends, error) {
	ends, err := e.transport.Ends(ctx, c.Topics()...)
	if err != nil {
		return nil, fmt.Errorf("ends of the topics of group %s: %w", c.Group(), err)
	}
	return ends, nil
}

// BacklogBefore returns how many of the messages before ends (see
// [Env.Ends]) c's group has not finished yet (see
// [transport.Transport.BacklogBefore]).
func (e *Env) BacklogBefore(ctx context.Context, c *consumer.Consumer, ends transport.Ends) (int64, error) {
	n, err := e.transport.BacklogBefore(ctx, c.Group(), ends)
	if err != nil {
		return 0, fmt.Errorf("backlog of group %s: %w", c.Group(), err)
	}
	return n, nil
}

// DeleteGroup removes c's group from the broker, on the topics c reads
// (see [transport.Transport.DeleteGroup]): for a group made by
// [Env.NewConsumer] whose work is over. It fails, wrapping
// [transport.ErrGroupInUse], while any member still runs.
func (e *Env) DeleteGroup(ctx context.Context, c *consumer.Consumer) error {
	return e.transport.DeleteGroup(ctx, c.Group(), c.Topics()...)
}

// Go runs fn once the service is ready, until shutdown cancels its context.
// An error it returns stops the service.
func (e *Env) Go(fn func(ctx context.Context) error) { e.background = append(e.background, fn) }

// WatchHub returns a hub for the watch streams following channel (see
// package watch), started with the service: it listens on its own
// connection, its streams read through [watch.Hub.DB] (a pool of
// WatchDBConns, apart from Pool, so that a crowd of streams woken at once
// never takes the connections the consumers need), and the process serves
// at most WatchMaxStreams streams across its hubs.
func (e *Env) WatchHub(channel string) *watch.Hub {
	h := watch.NewHub(e.watchPool, channel, e.watchLimit, e.Logger)
	e.Go(h.Run)
	return h
}

// Stopping is closed when shutdown begins; long-lived streams return then so
// that graceful shutdown does not wait for them.
func (e *Env) Stopping() <-chan struct{} { return e.stopping }
