package service

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The probes set readiness from the database and the broker, and the relay
// status from the relay's check alone, only when they change.
func TestHealthProbes(t *testing.T) {
	t.Parallel()
	down := errors.New("down")
	const (
		up   = healthpb.HealthCheckResponse_SERVING
		dead = healthpb.HealthCheckResponse_NOT_SERVING
		none = healthpb.HealthCheckResponse_UNKNOWN // not set by this probe
	)
	steps := []struct {
		db, broker, relay error
		ready, relay2     healthpb.HealthCheckResponse_ServingStatus
	}{
		{nil, nil, nil, up, up},       // first probe sets both
		{nil, nil, nil, none, none},   // nothing changed
		{nil, nil, down, none, dead},  // relay stuck: readiness stays
		{down, nil, down, dead, none}, // database down
		{nil, down, nil, none, up},    // broker down, relay recovered
		{nil, nil, nil, up, none},     // all back
	}
	var ready, relay healthpb.HealthCheckResponse_ServingStatus
	var dbErr, brokerErr, relayErr error
	h := &healthProbes{
		database: func(context.Context) error { return dbErr },
		broker:   func(context.Context) error { return brokerErr },
		relay:    func() error { return relayErr },
		setReady: func(s healthpb.HealthCheckResponse_ServingStatus) { ready = s },
		setRelay: func(s healthpb.HealthCheckResponse_ServingStatus) { relay = s },
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i, s := range steps {
		ready, relay = none, none
		dbErr, brokerErr, relayErr = s.db, s.broker, s.relay
		h.probe(context.Background(), logger)
		if ready != s.ready || relay != s.relay2 {
			t.Errorf("step %d: set readiness %s, relay %s; want %s, %s", i, ready, relay, s.ready, s.relay2)
		}
	}
}
