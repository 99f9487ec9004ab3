// Package service is the process skeleton every Switchyard service shares:
// configuration from the environment, structured logs, the database pool and
// migrations, the gRPC server (health, reflection, panic recovery, error
// mapping), the outbox relay and the inbox consumer, readiness, and graceful
// shutdown. A service supplies only its domain through [Spec]; its consumer
// reads the topics of the events its handlers take (each event message
// declares its aggregate, see package eventpb). Its main is
//
//	service.Main(service.Spec{
//		Name:       "payments",
//		Port:       50054,
//		Migrations: migrations, // an fs.FS of *.sql files
//		Emits:      true,       // it writes events, so it gets an outbox relay
//		Setup:      setup,      // registers the gRPC services and event handlers on the Env
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
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/multitracer"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/switchyard/switchyard/platform/backoff"
	"github.com/switchyard/switchyard/platform/idempotency"
	"github.com/switchyard/switchyard/platform/migrate"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/redisstream"
	"github.com/switchyard/switchyard/platform/relay"
	"github.com/switchyard/switchyard/platform/telemetry"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/watch"
)

// Spec is what a service contributes.
type Spec struct {
	// Name is the service's name ("orders"): the consumer group, the log
	// attribute and the default CloudEvents source.
	Name string
	// Port is the default gRPC port.
	Port int
	// Migrations holds the service's *.sql migrations (see package migrate).
	Migrations fs.FS
	// Subscribe lists aggregate types whose topics the service's consumer
	// reads beyond those it finds by itself: it reads the topic of the
	// aggregate each handled event type declares (option
	// (switchyard.event.v1.aggregate), see package eventpb). Only event
	// types that declare none, such as the well-known wrapper types, need
	// their aggregate listed here.
	Subscribe []string
	// Emits says the service writes events (Env.Outbox). Only then does it
	// get an outbox table and a relay, and in cdc mode a replication slot:
	// a slot that no relay reads would keep the database's WAL for ever.
	// Without it, Env.Outbox fails every write with outbox.ErrNoRelay.
	Emits bool
	// Setup registers the gRPC services and event handlers and may start
	// background loops with [Env.Go]. It runs before the server listens.
	Setup func(env *Env) error
}

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
	metrics := telemetry.NewMetrics()
	// A span per query, in the caller's trace, and a count of round trips.
	pcfg.ConnConfig.Tracer = multitracer.New(otelpgx.NewTracer(), metrics.DBTracer())
	pcfg.AfterConnect = func(_ context.Context, conn *pgx.Conn) error {
		encodeUUIDs(conn.TypeMap())
		return nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer pool.Close()
	wcfg := pcfg.Copy()
	// The LISTEN connection leaves the pool once hijacked, so it comes on
	// top; the hubs' record of followed keys shares these with the streams.
	wcfg.MaxConns = int32(cfg.WatchDBConns)
	wcfg.MinConns = 0
	watchPool, err := pgxpool.NewWithConfig(context.Background(), wcfg)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer watchPool.Close()
	metrics.RegisterPool("main", pool)
	metrics.RegisterPool("watch", watchPool)
	tr, err := openTransport(cfg, logger)
	if err != nil {
		return err
	}
	defer tr.Close()

	var ready atomic.Bool
	healthSrv := health.NewServer()
	server := grpc.NewServer(
		grpc.StatsHandler(otelgrpc.NewServerHandler()),
		grpc.ChainUnaryInterceptor(unaryGuard(&ready, logger, metrics)),
		grpc.ChainStreamInterceptor(streamGuard(&ready, logger, metrics)),
	)
	healthpb.RegisterHealthServer(server, healthSrv)
	reflection.Register(server)

	env := &Env{
		Name: spec.Name, Config: cfg, Pool: pool, Outbox: outbox.NoRelay(spec.Name),
		Server: server, Logger: logger, Metrics: metrics, stopping: make(chan struct{}), transport: tr,
		watchPool: watchPool, watchLimit: watch.NewLimit(cfg.WatchMaxStreams),
	}
	// Commands addressed to a service live in its own package.
	env.Consumer, err = env.addConsumer(spec.Name, spec.Subscribe, []string{"switchyard." + spec.Name + ".v1"})
	if err != nil {
		return err
	}
	var rl *relay.Relay // nil when the service emits nothing
	if spec.Emits {
		env.Outbox = outbox.NewWriter(cfg.OutboxMode)
		if rl, err = relay.New(relay.Config{
			Mode: cfg.OutboxMode, DatabaseURL: cfg.DatabaseURL, Transport: tr,
			TopicPrefix: cfg.TopicPrefix, Source: "/switchyard/" + spec.Name, Logger: logger,
		}); err != nil {
			return err
		}
	}
	if err := spec.Setup(env); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if err := env.settleConsumers(); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if rl != nil {
		metrics.RegisterRelay(rl, pool, rl.Slot())
	}
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
	healthSrv.SetServingStatus(BrokerHealthService, healthpb.HealthCheckResponse_NOT_SERVING)
	if rl != nil {
		healthSrv.SetServingStatus(RelayHealthService, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	// "liveness" is SERVING while the process runs: a liveness probe must
	// not restart a service just because its database is down.
	healthSrv.SetServingStatus(LivenessService, healthpb.HealthCheckResponse_SERVING)

	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		_ = metricsLis.Close()
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
		if rl != nil {
			start("relay", rl.Run)
		}
		for _, c := range env.consumers {
			start("consumer "+c.Group(), c.Run)
		}
		for _, fn := range env.background {
			start("background", fn)
		}
		start("idempotency", func(ctx context.Context) error {
			return pruneIdempotencyKeys(ctx, pool, cfg.IdempotencyRetention, logger)
		})
		db := newDBProbe(pcfg.ConnConfig, spec.Name+"-health")
		probes := healthProbes{
			database: db.check, broker: tr.Check,
			setReady:  setHealth,
			setBroker: func(s healthpb.HealthCheckResponse_ServingStatus) { healthSrv.SetServingStatus(BrokerHealthService, s) },
		}
		if rl != nil {
			probes.relay = rl.Check
			probes.setRelay = func(s healthpb.HealthCheckResponse_ServingStatus) { healthSrv.SetServingStatus(RelayHealthService, s) }
		}
		start("health", func(ctx context.Context) error {
			defer db.close()
			return probes.loop(ctx, logger)
		})
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
// rl is nil for a service that emits nothing.
func bootstrap(ctx context.Context, spec Spec, env *Env, rl *relay.Relay, tr transport.Transport) error {
	retry := backoff.New(500*time.Millisecond, 5*time.Second)
	for attempt := 1; ; attempt++ {
		err := func() error {
			if err := env.Pool.Ping(ctx); err != nil {
				return fmt.Errorf("database unreachable: %w", err)
			}
			// The outbox table comes with rl.Prepare below, the inbox with
			// the consumer's Run; idempotency keys and the watch hubs'
			// followed keys are the service's own.
			if err := idempotency.Migrate(ctx, env.Pool); err != nil {
				return err
			}
			if err := watch.Migrate(ctx, env.Pool); err != nil {
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
			if rl == nil {
				warnOrphanSlot(ctx, env)
			} else if err := rl.Prepare(ctx); err != nil {
				// Retrying will not fix it: an operator must act (the error says how).
				if relay.IsPermanent(err) {
					return permanentErr{err}
				}
				return err
			}
			tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := tr.EnsureTopics(tctx, env.topics...); err != nil {
				if errors.Is(err, redisstream.ErrPartitionsChanged) {
					return permanentErr{err}
				}
				return fmt.Errorf("create topics %v: %w", env.topics, err)
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
			return ctx.Err() // stopped before ready: nothing more starts
		}
	}
}

type permanentErr struct{ error }

// warnOrphanSlot logs, for a service that emits nothing, the replication
// slot an earlier version made for its relay: no one reads it any more, so
// it keeps the cluster's WAL from being recycled. Dropping it is left to an
// operator, who can tell whether anything unpublished is left in it.
func warnOrphanSlot(ctx context.Context, env *Env) {
	slot := relay.SlotName(env.Pool.Config().ConnConfig.Database)
	var exists bool
	err := env.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)`, slot).Scan(&exists)
	if err != nil || !exists {
		return // a failed look is retried by nothing: it only ever logs
	}
	env.Logger.Warn("replication slot left by an earlier version retains WAL; this service emits no events: drop it",
		"slot", slot, "sql", fmt.Sprintf("SELECT pg_drop_replication_slot('%s')", slot))
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
