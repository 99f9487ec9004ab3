package orders

import (
	"context"
	"fmt"
	"sync"
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
	mu       sync.Mutex
	seen     int64         // orders not yet terminal, as last read
	pending  int64         // seen, plus the orders admitted since
	oldest   time.Duration // age of the oldest, as last read
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
			func() float64 { b.mu.Lock(); defer b.mu.Unlock(); return float64(b.seen) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_orders_oldest_pending_age_seconds",
			Help: "Age of the oldest order whose saga has not finished."},
			func() float64 { b.mu.Lock(); defer b.mu.Unlock(); return b.oldest.Seconds() }),
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
			b.mu.Lock()
			b.seen, b.pending, b.oldest = n, n, oldest
			b.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

// minAgeLimit is how many orders may be in flight whatever their age: one
// slow order (a participant retrying, a group rebalancing) then does not
// refuse new ones at low load.
const minAgeLimit = 10

// admit decides whether a new order may start: not while maxPending sagas
// are in flight, nor while the oldest has waited longer than maxAge and at
// least minAgeLimit are — past either the saga is not keeping up, and an
// order accepted now would wait as long or end in TIMEOUT. pending counts
// the sagas in flight when the backlog was last read (seen) and the orders
// admitted since. A limit of 0 is off. The error is RESOURCE_EXHAUSTED with
// RetryInfo.
func admit(pending, seen int64, oldest time.Duration, maxPending int, maxAge time.Duration) error {
	var why string
	switch {
	case maxPending > 0 && pending >= int64(maxPending):
		why = fmt.Sprintf("%d orders are in progress (limit %d)", pending, maxPending)
	case maxAge > 0 && oldest > maxAge && seen >= minAgeLimit:
		why = fmt.Sprintf("the oldest of %d orders in progress has waited %s (limit %s)", seen, oldest.Round(time.Millisecond), maxAge)
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

// admit applies admission control to a new order, and counts it in flight
// until the next refresh reads the backlog again.
func (b *backlog) admit(o Options) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	err := admit(b.pending, b.seen, b.oldest, o.MaxPending, o.MaxPendingAge)
	if err != nil {
		b.rejected.Inc()
		return err
	}
	b.pending++
	return nil
}
