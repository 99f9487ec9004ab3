package service

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
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

// BrokerHealthService is the health service name that reports whether the
// broker answers. Like the relay's, it is kept out of readiness: RPCs need
// only the database (the outbox keeps their events until the broker is
// back), so a broker restart must not take every service's endpoints away.
// Consumers wait meanwhile; alert on it, or on consumer lag.
const BrokerHealthService = "broker"

// healthProbes keeps the health statuses in line with the service's
// dependencies: readiness follows the reachability of the database, the
// broker and relay statuses follow the broker's check and
// [relay.Relay.Check].
type healthProbes struct {
	database, broker func(context.Context) error
	relay            func() error // nil without a relay
	setReady         func(healthpb.HealthCheckResponse_ServingStatus)
	setBroker        func(healthpb.HealthCheckResponse_ServingStatus)
	setRelay         func(healthpb.HealthCheckResponse_ServingStatus)

	ready, brokerOK, relayOK bool // the statuses last set
	checked                  bool // whether any were set
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
	first := !h.checked
	h.checked = true
	flip(first, &h.ready, dbErr, h.setReady, logger, "health: SERVING again: the database answers",
		"health: NOT_SERVING: the database does not answer", slog.LevelWarn)
	flip(first, &h.brokerOK, brokerErr, h.setBroker, logger, "health: broker answers again",
		"health: broker NOT_SERVING: events wait in the outbox and consumers wait; RPCs are served", slog.LevelWarn)
	if h.relay == nil {
		return
	}
	flip(first, &h.relayOK, h.relay(), h.setRelay, logger, "health: relay publishes again",
		"health: relay NOT_SERVING: events are not reaching the broker", slog.LevelError)
}

// flip sets a status from a check's error when it changed since the last
// probe (*ok), or on the first probe, and logs the change: down at level
// with the error, up when it recovers (the service logs "ready" itself).
func flip(first bool, ok *bool, err error, set func(healthpb.HealthCheckResponse_ServingStatus),
	logger *slog.Logger, up, down string, level slog.Level) {
	now := err == nil
	if !first && now == *ok {
		return
	}
	*ok = now
	if !now {
		set(healthpb.HealthCheckResponse_NOT_SERVING)
		logger.Log(context.Background(), level, down, "error", err)
		return
	}
	set(healthpb.HealthCheckResponse_SERVING)
	if !first {
		logger.Info(up)
	}
}

// dbProbe asks whether the database answers, on a connection of its own:
// a ping through the pool would first wait for a free connection, so a busy
// pool (every connection held by RPCs and consumer batches) would read as a
// database down and take every replica out of service at once. A failed
// ping drops the connection; the next probe connects again.
type dbProbe struct {
	cfg  *pgx.ConnConfig
	conn *pgx.Conn
}

// newDBProbe returns a probe connecting as cfg does, named name in
// pg_stat_activity and left out of the pool's tracing and query counts.
func newDBProbe(cfg *pgx.ConnConfig, name string) *dbProbe {
	cfg = cfg.Copy()
	cfg.Tracer = nil
	cfg.RuntimeParams["application_name"] = name
	return &dbProbe{cfg: cfg}
}

func (p *dbProbe) check(ctx context.Context) error {
	if p.conn == nil {
		conn, err := pgx.ConnectConfig(ctx, p.cfg)
		if err != nil {
			return err
		}
		p.conn = conn
	}
	if err := p.conn.Ping(ctx); err != nil {
		p.close()
		return err
	}
	return nil
}

func (p *dbProbe) close() {
	if p.conn != nil {
		_ = p.conn.Close(context.Background())
		p.conn = nil
	}
}
