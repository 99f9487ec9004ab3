// Package service is the process skeleton every Switchyard service shares:
// configuration from the environment, structured logs, the database pool and
// migrations, the gRPC server (health, reflection, panic recovery, error
// mapping), the outbox relay and the inbox consumer, readiness, and graceful
// shutdown. A service supplies only its domain through [Spec]; its main is
//
//	service.Main(service.Spec{
//		Name:       "payments",
//		Port:       50054,
//		Migrations: migrations, // an fs.FS of *.sql files
//		Subscribe:  []string{"customer", "order"},
//		Setup:      setup, // registers the gRPC services and event handlers on the Env
//	})
package service

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/switchyard/switchyard/platform/backoff"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/idempotency"
	"github.com/switchyard/switchyard/platform/migrate"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/redisstream"
	"github.com/switchyard/switchyard/platform/relay"
	"github.com/switchyard/switchyard/platform/telemetry"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/watch"
)

// LivenessService is the health service name that reports SERVING for as
// long as the process runs (for liveness probes); the empty name and each
// gRPC service's name report readiness.
const LivenessService = "liveness"

// RelayHealthService is the health service name that reports whether the
// outbox relay publishes: NOT_SERVING while it is stuck (see
// [relay.Relay.Check]), with a log line saying why. It is kept apart from
// readiness on purpose: a stuck relay loses nothing (events wait in the
// outbox), and taking the RPCs down with it would turn a delay into an
// outage. Alert on it, or on the metric switchyard_relay_stuck.
const RelayHealthService = "relay"

// Spec is what a service contributes.
type Spec struct {
	// Name is the service's name ("orders"): the consumer group, the log
	// attribute and the default CloudEvents source.
	Name string
	// Port is the default gRPC port.
	Port int
	// Migrations holds the service's *.sql migrations (see package migrate).
	Migrations fs.FS
	// Subscribe lists the aggregate types whose topics the service consumes.
	Subscribe []string
	// Setup registers the gRPC services and event handlers and may start
	// background loops with [Env.Go]. It runs before the server listens.
	Setup func(env *Env) error
}

// Config is the environment-driven configuration common to all services.
type Config struct {
	GRPCAddr       string        // SWITCHYARD_GRPC_ADDR, default ":<port>"
	MetricsAddr    string        // SWITCHYARD_METRICS_ADDR, default ":<port+1000>" (Prometheus /metrics)
	DatabaseURL    string        // SWITCHYARD_DATABASE_URL, required
	Transport      string        // SWITCHYARD_TRANSPORT: kafka (default) or redis
	Brokers        string        // SWITCHYARD_KAFKA_BROKERS, default 127.0.0.1:19092
	RedisURL       string        // SWITCHYARD_REDIS_URL, default redis://127.0.0.1:16379/0
	TopicPrefix    string        // SWITCHYARD_TOPIC_PREFIX, default "switchyard."
	OutboxMode     outbox.Mode   // SWITCHYARD_OUTBOX_MODE, cdc (default) or poll
	Partitions     int           // SWITCHYARD_TOPIC_PARTITIONS, default 6
	TopicRetention time.Duration // SWITCHYARD_TOPIC_RETENTION, default 0: keep events for ever
	// IdempotencyRetention is how long idempotency keys are kept
	// (SWITCHYARD_IDEMPOTENCY_RETENTION, default 24h); a retry after it runs
	// the request again.
	IdempotencyRetention time.Duration
	// WatchMaxStreams bounds the watch streams (WatchOrder, ...) a process
	// serves at once (SWITCHYARD_WATCH_MAX_STREAMS, default 1000); past it
	// they fail with RESOURCE_EXHAUSTED.
	WatchMaxStreams int
	// WatchDBConns is the size of the watch streams' own connection pool
	// (SWITCHYARD_WATCH_DB_CONNS, default 4), apart from the pool consumers
	// and other RPCs use, plus one LISTEN connection per hub.
	WatchDBConns int
	// DatabaseMaxConns is the size of the service's PostgreSQL pool
	// (SWITCHYARD_DATABASE_MAX_CONNS, default 16). 0 means the URL's
	// pool_max_conns, used when the variable is unset and the URL has one.
	// The outbox relay opens up to 2 connections outside the pool.
	DatabaseMaxConns int32
	ShutdownTimeout  time.Duration // SWITCHYARD_SHUTDOWN_TIMEOUT, default 20s
	LogLevel         slog.Level    // SWITCHYARD_LOG_LEVEL, default info
	LogFormat        string        // SWITCHYARD_LOG_FORMAT: json (default) or text
	// CacheURL is the Redis a service may cache reads in
	// (SWITCHYARD_CACHE_URL, default none: no cache). See package cache.
	CacheURL string
}

// LoadConfig reads the configuration of a service whose default port is
// port through getenv (os.Getenv in production).
func LoadConfig(port int, getenv func(string) string) (Config, error) {
	get := func(k, def string) string {
		if v := strings.TrimSpace(getenv(k)); v != "" {
			return v
		}
		return def
	}
	cfg := Config{
		GRPCAddr:    get("SWITCHYARD_GRPC_ADDR", ":"+strconv.Itoa(port)),
		MetricsAddr: get("SWITCHYARD_METRICS_ADDR", ":"+strconv.Itoa(port+1000)),
		DatabaseURL: get("SWITCHYARD_DATABASE_URL", ""),
		Transport:   get("SWITCHYARD_TRANSPORT", "kafka"),
		Brokers:     get("SWITCHYARD_KAFKA_BROKERS", "127.0.0.1:19092"),
		RedisURL:    get("SWITCHYARD_REDIS_URL", "redis://127.0.0.1:16379/0"),
		TopicPrefix: get("SWITCHYARD_TOPIC_PREFIX", "switchyard."),
		LogFormat:   get("SWITCHYARD_LOG_FORMAT", "json"),
		CacheURL:    get("SWITCHYARD_CACHE_URL", ""),
	}
	var errs []error
	if cfg.DatabaseURL == "" {
		errs = append(errs, errors.New("SWITCHYARD_DATABASE_URL is required"))
	}
	var err error
	if v := get("SWITCHYARD_DATABASE_MAX_CONNS", ""); v != "" {
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("SWITCHYARD_DATABASE_MAX_CONNS: want a positive integer"))
		}
		cfg.DatabaseMaxConns = int32(n)
	} else if !strings.Contains(cfg.DatabaseURL, "pool_max_conns") {
		// pgxpool's default (max(4, CPUs)) starves a service whose consumer
		// applies several partitions at once while serving RPCs.
		cfg.DatabaseMaxConns = 16
	}
	if cfg.OutboxMode, err = outbox.ParseMode(get("SWITCHYARD_OUTBOX_MODE", "cdc")); err != nil {
		errs = append(errs, fmt.Errorf("SWITCHYARD_OUTBOX_MODE: %w", err))
	}
	if cfg.Partitions, err = strconv.Atoi(get("SWITCHYARD_TOPIC_PARTITIONS", "6")); err != nil || cfg.Partitions < 1 {
		errs = append(errs, fmt.Errorf("SWITCHYARD_TOPIC_PARTITIONS: want a positive integer"))
	}
	if cfg.TopicRetention, err = time.ParseDuration(get("SWITCHYARD_TOPIC_RETENTION", "0s")); err != nil || cfg.TopicRetention < 0 {
		errs = append(errs, fmt.Errorf("SWITCHYARD_TOPIC_RETENTION: want a duration such as 168h, or 0 for unlimited"))
	}
	if cfg.IdempotencyRetention, err = time.ParseDuration(get("SWITCHYARD_IDEMPOTENCY_RETENTION", "24h")); err != nil || cfg.IdempotencyRetention <= 0 {
		errs = append(errs, fmt.Errorf("SWITCHYARD_IDEMPOTENCY_RETENTION: want a positive duration such as 24h"))
	}
	if cfg.WatchMaxStreams, err = strconv.Atoi(get("SWITCHYARD_WATCH_MAX_STREAMS", "1000")); err != nil || cfg.WatchMaxStreams < 1 {
		errs = append(errs, fmt.Errorf("SWITCHYARD_WATCH_MAX_STREAMS: want a positive integer"))
	}
	if cfg.WatchDBConns, err = strconv.Atoi(get("SWITCHYARD_WATCH_DB_CONNS", "4")); err != nil || cfg.WatchDBConns < 1 {
		errs = append(errs, fmt.Errorf("SWITCHYARD_WATCH_DB_CONNS: want a positive integer"))
	}
	if cfg.ShutdownTimeout, err = time.ParseDuration(get("SWITCHYARD_SHUTDOWN_TIMEOUT", "20s")); err != nil {
		errs = append(errs, fmt.Errorf("SWITCHYARD_SHUTDOWN_TIMEOUT: %w", err))
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(get("SWITCHYARD_LOG_LEVEL", "info"))); err != nil {
		errs = append(errs, fmt.Errorf("SWITCHYARD_LOG_LEVEL: %w", err))
	}
	if cfg.Transport != "kafka" && cfg.Transport != "redis" {
		errs = append(errs, fmt.Errorf("SWITCHYARD_TRANSPORT: want kafka or redis, not %q", cfg.Transport))
	}
	if cfg.LogFormat != "json" && cfg.LogFormat != "text" {
		errs = append(errs, fmt.Errorf("SWITCHYARD_LOG_FORMAT: want json or text"))
	}
	return cfg, errors.Join(errs...)
}

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

// Main runs the service until SIGINT or SIGTERM and exits non-zero if it
// fails.
func Main(spec Spec) {
	cfg, err := LoadConfig(spec.Port, os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: configuration: %v\n", spec.Name, err)
		os.Exit(2)
	}
	logger := NewLogger(os.Stderr, cfg, spec.Name)
	slog.SetDefault(logger)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	shutdownTracing, err := telemetry.SetupTracing(ctx, spec.Name, os.Getenv)
	if err != nil {
		logger.Error("tracing", "error", err)
		os.Exit(2)
	}
	err = Run(ctx, spec, cfg, logger, nil)
	fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if terr := shutdownTracing(fctx); terr != nil {
		logger.Warn("flush traces", "error", terr)
	}
	if err != nil {
		logger.Error("service failed", "error", err)
		os.Exit(1)
	}
}

// NewLogger returns the service's structured logger; records logged with a
// traced context carry trace_id and span_id.
func NewLogger(w *os.File, cfg Config, name string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if cfg.LogFormat == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(telemetry.LogHandler(h)).With("service", name)
}

// Run serves until ctx is cancelled, then shuts down gracefully: health
// turns NOT_SERVING, in-flight RPCs finish (up to ShutdownTimeout), the
// relay and consumer stop cleanly. listening, if set, is called with the
// bound address once the server accepts connections.
func Run(ctx context.Context, spec Spec, cfg Config, logger *slog.Logger, listening func(net.Addr)) error {
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("SWITCHYARD_DATABASE_URL: %w", err)
	}
	if cfg.DatabaseMaxConns > 0 {
		// The variable wins over the URL: it is the budget PostgreSQL's
		// max_connections was sized for (the chart sets both).
		pcfg.MaxConns = cfg.DatabaseMaxConns
	}
	pcfg.ConnConfig.Tracer = otelpgx.NewTracer() // a span per query, in the caller's trace
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer pool.Close()
	wcfg := pcfg.Copy()
	wcfg.MaxConns = int32(cfg.WatchDBConns) + 1 // + the LISTEN connection
	wcfg.MinConns = 0
	watchPool, err := pgxpool.NewWithConfig(context.Background(), wcfg)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer watchPool.Close()
	tr, err := openTransport(cfg, logger)
	if err != nil {
		return err
	}
	defer tr.Close()

	var ready atomic.Bool
	metrics := telemetry.NewMetrics()
	healthSrv := health.NewServer()
	server := grpc.NewServer(
		grpc.StatsHandler(otelgrpc.NewServerHandler()),
		grpc.ChainUnaryInterceptor(unaryGuard(&ready, logger, metrics)),
		grpc.ChainStreamInterceptor(streamGuard(&ready, logger, metrics)),
	)
	healthpb.RegisterHealthServer(server, healthSrv)
	reflection.Register(server)

	env := &Env{
		Name: spec.Name, Config: cfg, Pool: pool, Outbox: outbox.NewWriter(cfg.OutboxMode),
		Server: server, Logger: logger, Metrics: metrics, stopping: make(chan struct{}), transport: tr,
		watchPool: watchPool, watchLimit: watch.NewLimit(cfg.WatchMaxStreams),
	}
	if len(spec.Subscribe) > 0 {
		// Commands addressed to a service live in its own package.
		env.Consumer, err = env.addConsumer(spec.Name, spec.Subscribe, []string{"switchyard." + spec.Name + ".v1"})
		if err != nil {
			return err
		}
	}
	rl, err := relay.New(relay.Config{
		Mode: cfg.OutboxMode, DatabaseURL: cfg.DatabaseURL, Transport: tr,
		TopicPrefix: cfg.TopicPrefix, Source: "/switchyard/" + spec.Name, Logger: logger,
	})
	if err != nil {
		return err
	}
	if err := spec.Setup(env); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	metrics.RegisterRelay(rl, pool, rl.Slot())
	if rs, ok := tr.(*redisstream.Transport); ok {
		metrics.RegisterRedis(rs)
	}
	for _, c := range env.consumers {
		metrics.RegisterConsumer(c)
	}
	metrics.RegisterWatch(env.watchLimit)
	metricsLis, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", cfg.MetricsAddr, err)
	}
	// Health is NOT_SERVING for the server and for each of its services
	// until the database and the broker are reachable.
	serviceNames := []string{""}
	for name := range server.GetServiceInfo() {
		serviceNames = append(serviceNames, name)
	}
	setHealth := func(s healthpb.HealthCheckResponse_ServingStatus) {
		for _, n := range serviceNames {
			healthSrv.SetServingStatus(n, s)
		}
	}
	setHealth(healthpb.HealthCheckResponse_NOT_SERVING)
	healthSrv.SetServingStatus(RelayHealthService, healthpb.HealthCheckResponse_NOT_SERVING)
	// "liveness" is SERVING while the process runs: a liveness probe must
	// not restart a service just because its database is down.
	healthSrv.SetServingStatus(LivenessService, healthpb.HealthCheckResponse_SERVING)

	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.GRPCAddr, err)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- server.Serve(lis) }()
	logger.Info("listening", "addr", lis.Addr().String())
	if listening != nil {
		listening(lis.Addr())
	}

	bgCtx, cancelBG := context.WithCancel(context.Background())
	defer cancelBG()
	var wg sync.WaitGroup
	failed := make(chan error, 1)
	fail := func(err error) {
		select {
		case failed <- err:
		default:
		}
	}
	start := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(bgCtx); err != nil && bgCtx.Err() == nil {
				fail(fmt.Errorf("%s: %w", name, err))
			}
		}()
	}

	start("metrics", func(ctx context.Context) error { return metrics.Serve(ctx, metricsLis) })
	logger.Info("serving metrics", "addr", metricsLis.Addr().String(), "path", "/metrics")

	// Bootstrap in the background so that health can answer meanwhile.
	start("bootstrap", func(ctx context.Context) error {
		if err := bootstrap(ctx, spec, env, rl, tr); err != nil {
			return err
		}
		ready.Store(true)
		start("relay", rl.Run)
		for _, c := range env.consumers {
			start("consumer "+c.Group(), c.Run)
		}
		for _, fn := range env.background {
			start("background", fn)
		}
		start("idempotency", func(ctx context.Context) error {
			return pruneIdempotencyKeys(ctx, pool, cfg.IdempotencyRetention, logger)
		})
		probes := healthProbes{
			database: pool.Ping, broker: tr.Check, relay: rl.Check,
			setReady: setHealth,
			setRelay: func(s healthpb.HealthCheckResponse_ServingStatus) { healthSrv.SetServingStatus(RelayHealthService, s) },
		}
		start("health", func(ctx context.Context) error { return probes.loop(ctx, logger) })
		logger.Info("ready")
		return nil
	})

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case runErr = <-failed:
		logger.Error("stopping after failure", "error", runErr)
	case runErr = <-serveErr:
		runErr = fmt.Errorf("grpc server: %w", runErr)
	}

	setHealth(healthpb.HealthCheckResponse_NOT_SERVING)
	close(env.stopping)
	stopped := make(chan struct{})
	go func() { server.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(cfg.ShutdownTimeout):
		logger.Warn("in-flight RPCs did not finish in time; closing them", "timeout", cfg.ShutdownTimeout)
		server.Stop()
	}
	cancelBG()
	wg.Wait()
	logger.Info("stopped")
	return runErr
}

// bootstrap waits for the database and the broker, then applies the
// migrations, prepares the relay and creates the consumed topics.
func bootstrap(ctx context.Context, spec Spec, env *Env, rl *relay.Relay, tr transport.Transport) error {
	retry := backoff.New(500*time.Millisecond, 5*time.Second)
	for attempt := 1; ; attempt++ {
		err := func() error {
			if err := env.Pool.Ping(ctx); err != nil {
				return fmt.Errorf("database unreachable: %w", err)
			}
			// The outbox table comes with rl.Prepare below, the inbox with
			// the consumer's Run; idempotency keys are the service's own.
			if err := idempotency.Migrate(ctx, env.Pool); err != nil {
				return err
			}
			if spec.Migrations != nil {
				applied, err := migrate.Apply(ctx, env.Pool, spec.Migrations)
				if err != nil {
					return err
				}
				if len(applied) > 0 {
					env.Logger.Info("applied migrations", "migrations", applied)
				}
			}
			if err := rl.Prepare(ctx); err != nil {
				// Neither fixes itself: an operator must act (the errors say how).
				if errors.Is(err, relay.ErrLogicalReplicationOff) || errors.Is(err, relay.ErrSlotLost) {
					return permanentErr{err}
				}
				return err
			}
			tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := tr.EnsureTopics(tctx, env.topics...); err != nil {
				return fmt.Errorf("broker unreachable: %w", err)
			}
			return nil
		}()
		if err == nil {
			return nil
		}
		var perm permanentErr
		if errors.As(err, &perm) {
			return perm.error
		}
		env.Logger.Warn("not ready yet; retrying", "attempt", attempt, "error", err, "retry_in", retry.Next())
		if !retry.Wait(ctx) {
			return nil
		}
	}
}

type permanentErr struct{ error }

// healthProbes keeps the health statuses in line with the service's
// dependencies: readiness follows the reachability of the database and the
// broker, the relay status follows [relay.Relay.Check].
type healthProbes struct {
	database, broker func(context.Context) error
	relay            func() error
	setReady         func(healthpb.HealthCheckResponse_ServingStatus)
	setRelay         func(healthpb.HealthCheckResponse_ServingStatus)

	ready, relayOK bool // the statuses last set
	checked        bool // whether any were set
}

// loop probes every two seconds until ctx ends.
func (h *healthProbes) loop(ctx context.Context, logger *slog.Logger) error {
	for {
		h.probe(ctx, logger)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
}

// probe checks once and sets the statuses that changed, logging why.
func (h *healthProbes) probe(ctx context.Context, logger *slog.Logger) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	dbErr := h.database(cctx)
	cancel()
	cctx, cancel = context.WithTimeout(ctx, 2*time.Second)
	brokerErr := h.broker(cctx)
	cancel()
	relayErr := h.relay()
	first := !h.checked
	h.checked = true
	if ready := dbErr == nil && brokerErr == nil; first || ready != h.ready {
		h.ready = ready
		if ready {
			h.setReady(healthpb.HealthCheckResponse_SERVING)
			logger.Info("health: SERVING")
		} else {
			h.setReady(healthpb.HealthCheckResponse_NOT_SERVING)
			logger.Warn("health: NOT_SERVING", "database_error", errString(dbErr), "broker_error", errString(brokerErr))
		}
	}
	if ok := relayErr == nil; first || ok != h.relayOK {
		h.relayOK = ok
		if ok {
			h.setRelay(healthpb.HealthCheckResponse_SERVING)
			if !first {
				logger.Info("health: relay publishes again")
			}
		} else {
			h.setRelay(healthpb.HealthCheckResponse_NOT_SERVING)
			logger.Error("health: relay NOT_SERVING: events are not reaching the broker", "error", relayErr)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// pruneIdempotencyKeys deletes expired idempotency keys every tenth of the
// retention (at most hourly) until ctx ends; failures are logged and retried.
func pruneIdempotencyKeys(ctx context.Context, pool *pgxpool.Pool, retention time.Duration, logger *slog.Logger) error {
	every := min(retention/10, time.Hour)
	for {
		if n, err := idempotency.Prune(ctx, pool, retention); err != nil && ctx.Err() == nil {
			logger.Warn("prune idempotency keys", "error", err)
		} else if n > 0 {
			logger.Info("pruned idempotency keys", "keys", n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}
