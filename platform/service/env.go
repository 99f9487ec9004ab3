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
	Consumer *consumer.Consumer // register event handlers here; nil when Spec.Subscribe is empty
	Logger   *slog.Logger       // structured logs carrying the service name (and trace ids, given a context)
	Metrics  *telemetry.Metrics // register the service's own Prometheus series on Metrics.Registry

	stopping   chan struct{}
	background []func(context.Context) error
	watchPool  *pgxpool.Pool
	watchLimit *watch.Limit
	transport  transport.Transport
	consumers  []*consumer.Consumer // Consumer first, if any
	topics     []string             // what the consumers read, created at bootstrap
}

// Topic returns the topic of an aggregate type.
func (e *Env) Topic(aggregateType string) string { return e.Config.TopicPrefix + aggregateType }

// AddConsumer returns a consumer of a group of its own reading the topics
// of aggregateTypes, for work whose progress must not be tied to the
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
	c, err := consumer.New(consumer.Config{Transport: e.transport, Group: group, Topics: topics, Pool: e.Pool, Logger: e.Logger,
		HoldPackages: holdPackages})
	if err != nil {
		return nil, fmt.Errorf("consumer group %s: %w", group, err)
	}
	e.consumers = append(e.consumers, c)
	for _, t := range topics {
		// Listed once: librdkafka crashes on a CreateTopics that names a
		// topic twice.
		if !slices.Contains(e.topics, t) {
			e.topics = append(e.topics, t)
		}
	}
	return c, nil
}

// NewConsumer returns a consumer of the service's database in a group of
// its own that the service neither starts nor registers: unlike
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
	cfg := consumer.Config{Transport: e.transport, Group: group, Topics: topics, Pool: e.Pool, Logger: e.Logger}
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
// (see [consumer.Consumer.Run]); while it runs, its lag is exported as
// switchyard_consumer_lag_messages with its group.
func (e *Env) RunConsumer(ctx context.Context, c *consumer.Consumer) error {
	untrack := e.Metrics.TrackLag(c)
	defer untrack()
	return c.Run(ctx)
}

// Backlog returns how many messages of the aggregate types' topics group
// has not finished yet (see [transport.Transport.Backlog]).
func (e *Env) Backlog(ctx context.Context, group string, aggregateTypes ...string) (int64, error) {
	topics := make([]string, len(aggregateTypes))
	for i, a := range aggregateTypes {
		topics[i] = e.Topic(a)
	}
	n, err := e.transport.Backlog(ctx, group, topics...)
	if err != nil {
		return 0, fmt.Errorf("backlog of group %s: %w", group, err)
	}
	return n, nil
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
