package telemetry

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// roundTrips counts the round trips a pool makes to PostgreSQL. Each
// statement sent on its own is one (BEGIN and COMMIT included), a batch
// of statements is one, a COPY is one: the unit that costs a write and a
// read on each side, whatever the statement does.
type roundTrips struct{ total prometheus.Counter }

// DBTracer returns a pgx tracer that counts the pool's round trips as
// switchyard_db_round_trips_total. Combine it with others through pgx's
// multitracer.
func (m *Metrics) DBTracer() pgx.QueryTracer {
	return m.db
}

func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	r.total.Inc()
	return ctx
}

func (r *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	r.total.Inc()
	return ctx
}

func (r *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

func (r *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func (r *roundTrips) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceCopyFromStartData) context.Context {
	r.total.Inc()
	return ctx
}

func (r *roundTrips) TraceCopyFromEnd(context.Context, *pgx.Conn, pgx.TraceCopyFromEndData) {}
