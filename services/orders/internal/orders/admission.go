package orders

import (
	"context"
	"fmt"
	"log/slog"
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
	admitted int64         // orders admitted, ever
	base     int64         // admitted when the last read began
	oldest   time.Duration // age of the oldest, as last read
	waited   time.Duration // age of the ageQuorum-th oldest, as last read
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
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_orders_tenth_oldest_pending_age_seconds",
			Help: "Age of the tenth oldest order whose saga has not finished (0 with fewer than ten): admission control's age bound applies to it."},
			func() float64 { b.mu.Lock(); defer b.mu.Unlock(); return b.waited.Seconds() }),
	}
}

// refresh reads the backlog every interval until ctx ends. A failed read
// keeps the last one, with the orders admitted since counted on top, and is
// logged when reads start and stop failing.
func (b *backlog) refresh(ctx context.Context, pool *pgxpool.Pool, interval time.Duration, logger *slog.Logger) error {
	failing := false
	for {
		switch err := b.read(ctx, pool); {
		case err != nil && !failing && ctx.Err() == nil:
			logger.Warn("admission control cannot read the orders in progress; it counts the orders it admits on top of the last read", "error", err)
			failing = true
		case err == nil && failing:
			logger.Info("admission control reads the orders in progress again")
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

// read reads the backlog once. Pending orders are those with a saga
// deadline (the partial index orders_deadline_idx).
func (b *backlog) read(ctx context.Context, pool *pgxpool.Pool) error {
	before := b.readStarts()
	var n int64
	var oldest, waited time.Duration
	err := pool.QueryRow(ctx, `SELECT count(*), coalesce(now() - min(create_time), '0'),
			coalesce(now() - (SELECT create_time FROM orders WHERE saga_deadline IS NOT NULL ORDER BY create_time OFFSET $1 - 1 LIMIT 1), '0')
		FROM orders WHERE saga_deadline IS NOT NULL`, ageQuorum).Scan(&n, &oldest, &waited)
	if err != nil {
		return fmt.Errorf("read the orders in progress: %w", err)
	}
	b.readDone(before, n, oldest, waited)
	return nil
}

// readStarts returns the orders admitted so far, for readDone.
func (b *backlog) readStarts() (admitted int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.admitted
}

// readDone records a read that began when before orders had been admitted.
// Orders admitted while the query ran may or may not be in n: they are
// counted on top (see pending), at worst twice until the next read.
func (b *backlog) readDone(before, n int64, oldest, waited time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seen, b.base, b.oldest, b.waited = n, before, oldest, waited
}

// ageQuorum is how many orders in progress must have waited longer than
// the age bound for it to refuse: one slow order (a participant retrying, a
// group rebalancing) does not, at any load.
const ageQuorum = 10

// admit decides whether a new order may start: not while maxPending sagas
// are in flight, nor while ageQuorum of them have waited longer than maxAge
// (waited is the age of the ageQuorum-th oldest) — past either the saga is
// not keeping up, and an order accepted now would wait as long or end in
// TIMEOUT. pending counts the sagas in flight when the backlog was last
// read and the orders admitted since. A limit of 0 or less is off. The error is
// RESOURCE_EXHAUSTED with RetryInfo.
func admit(pending int64, waited time.Duration, maxPending int, maxAge time.Duration) error {
	var why string
	switch {
	case maxPending > 0 && pending >= int64(maxPending):
		why = fmt.Sprintf("%d orders are in progress (limit %d)", pending, maxPending)
	case maxAge > 0 && waited > maxAge:
		why = fmt.Sprintf("%d orders in progress have waited longer than %s", ageQuorum, maxAge)
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
	err := admit(b.pending(), b.waited, o.MaxPending, o.MaxPendingAge)
	if err != nil {
		b.rejected.Inc()
		return err
	}
	b.admitted++
	return nil
}

// pending is the orders in flight as last read, plus those admitted since
// that read began. Callers hold b.mu.
func (b *backlog) pending() int64 { return b.seen + b.admitted - b.base }
