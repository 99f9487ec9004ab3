package orders

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// backlog is what admission control knows of the sagas in flight, refreshed
// in the background: CreateOrder must not pay a query for it.
type backlog struct {
	pending  atomic.Int64 // orders not yet terminal
	oldestNS atomic.Int64 // age of the oldest, in nanoseconds
	rejected prometheus.Counter
}

func newBacklog() *backlog {
	return &backlog{rejected: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "switchyard_orders_rejected_overload_total",
		Help: "CreateOrder calls refused with RESOURCE_EXHAUSTED because the saga could not keep up.",
	})}
}

// collectors exports the backlog.
func (b *backlog) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		b.rejected,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_orders_pending",
			Help: "Orders whose saga has not finished (as admission control last saw them)."},
			func() float64 { return float64(b.pending.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_orders_oldest_pending_age_seconds",
			Help: "Age of the oldest order whose saga has not finished."},
			func() float64 { return time.Duration(b.oldestNS.Load()).Seconds() }),
	}
}

// refresh reads the backlog every interval until ctx ends. Pending orders
// are those with a saga deadline (the partial index orders_deadline_idx).
func (b *backlog) refresh(ctx context.Context, pool *pgxpool.Pool, interval time.Duration) error {
	for {
		var n int64
		var oldest time.Duration
		err := pool.QueryRow(ctx, `SELECT count(*), coalesce(now() - min(create_time), '0') FROM orders WHERE saga_deadline IS NOT NULL`).Scan(&n, &oldest)
		if err == nil {
			b.pending.Store(n)
			b.oldestNS.Store(int64(oldest))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

// admit decides whether a new order may start: not when more than
// maxPending sagas are in flight, or the oldest has waited longer than
// maxAge — past either the saga is not keeping up, and an order accepted
// now would likely end in TIMEOUT. A limit of 0 is off. The error is
// RESOURCE_EXHAUSTED with RetryInfo.
func admit(pending int64, oldest time.Duration, maxPending int, maxAge time.Duration) error {
	var why string
	switch {
	case maxPending > 0 && pending >= int64(maxPending):
		why = fmt.Sprintf("%d orders are in progress (limit %d)", pending, maxPending)
	case maxAge > 0 && oldest > maxAge:
		why = fmt.Sprintf("the oldest order in progress has waited %s (limit %s)", oldest.Round(time.Millisecond), maxAge)
	default:
		return nil
	}
	st, err := status.New(codes.ResourceExhausted, "orders cannot keep up: "+why+"; nothing was written, retry later").
		WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)})
	if err != nil {
		return status.Error(codes.ResourceExhausted, "orders cannot keep up: "+why)
	}
	return st.Err()
}

// admit applies admission control to a new order.
func (b *backlog) admit(o Options) error {
	err := admit(b.pending.Load(), time.Duration(b.oldestNS.Load()), o.MaxPending, o.MaxPendingAge)
	if err != nil {
		b.rejected.Inc()
	}
	return err
}
