package service

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The probes set readiness from the database alone, and the broker and
// relay statuses from their own checks, each only when it changes.
func TestHealthProbes(t *testing.T) {
	t.Parallel()
	down := errors.New("down")
	const (
		up   = healthpb.HealthCheckResponse_SERVING
		dead = healthpb.HealthCheckResponse_NOT_SERVING
		none = healthpb.HealthCheckResponse_UNKNOWN // not set by this probe
	)
	steps := []struct {
		db, broker, relay   error
		ready, broker2, rl2 healthpb.HealthCheckResponse_ServingStatus
	}{
		{nil, nil, nil, up, up, up},         // first probe sets all
		{nil, nil, nil, none, none, none},   // nothing changed
		{nil, nil, down, none, none, dead},  // relay stuck: readiness stays
		{down, nil, down, dead, none, none}, // database down
		{nil, down, nil, up, dead, up},      // broker down: readiness stays up, relay recovered
		{nil, down, down, none, none, dead}, // the relay notices the broker
		{nil, nil, nil, none, up, up},       // all back
		{down, down, nil, dead, dead, none}, // both down
	}
	var ready, broker, relay healthpb.HealthCheckResponse_ServingStatus
	var dbErr, brokerErr, relayErr error
	h := &healthProbes{
		database:  func(context.Context) error { return dbErr },
		broker:    func(context.Context) error { return brokerErr },
		relay:     func() error { return relayErr },
		setReady:  func(s healthpb.HealthCheckResponse_ServingStatus) { ready = s },
		setBroker: func(s healthpb.HealthCheckResponse_ServingStatus) { broker = s },
		setRelay:  func(s healthpb.HealthCheckResponse_ServingStatus) { relay = s },
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i, s := range steps {
		ready, broker, relay = none, none, none
		dbErr, brokerErr, relayErr = s.db, s.broker, s.relay
		h.probe(context.Background(), logger)
		if ready != s.ready || broker != s.broker2 || relay != s.rl2 {
			t.Errorf("step %d: set readiness %s, broker %s, relay %s; want %s, %s, %s", i, ready, broker, relay, s.ready, s.broker2, s.rl2)
		}
	}
}
