package orders

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
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
	limit    limit
	rejected prometheus.Counter
}

func newBacklog(o Options) *backlog {
	return &backlog{
		limit: newLimit(o.MaxPending, o.MaxPendingAge),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_orders_rejected_overload_total",
			Help: "CreateOrder calls refused with RESOURCE_EXHAUSTED because the saga could not keep up.",
		})}
}

// collectors exports the backlog.
func (b *backlog) collectors() []prometheus.Collector {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help},
			func() float64 { b.mu.Lock(); defer b.mu.Unlock(); return f() })
	}
	return []prometheus.Collector{
		b.rejected,
		gauge("switchyard_orders_pending",
			"Orders whose saga has not finished (as admission control last saw them).",
			func() float64 { return float64(b.seen) }),
		gauge("switchyard_orders_oldest_pending_age_seconds",
			"Age of the oldest order whose saga has not finished.",
			func() float64 { return b.oldest.Seconds() }),
		gauge("switchyard_orders_tenth_oldest_pending_age_seconds",
			"Age of the tenth oldest order whose saga has not finished (0 with fewer than ten): admission control's age bound applies to it.",
			func() float64 { return b.waited.Seconds() }),
		gauge("switchyard_orders_admission_limit",
			"Orders admission control lets be in progress: SWITCHYARD_ORDERS_MAX_PENDING (2147483647 without one), or fewer once orders waited longer than SWITCHYARD_ORDERS_MAX_PENDING_AGE, until it has grown back.",
			func() float64 { return float64(b.limit.bound()) }),
	}
}

// refresh reads the backlog every interval until ctx ends. A failed read
// keeps the last one, with the orders admitted since counted on top, and is
// logged when reads start and stop failing.
func (b *backlog) refresh(ctx context.Context, pool *pgxpool.Pool, interval time.Duration, logger *slog.Logger) error {
	reads := failures{
		start: "admission control cannot read the orders in progress; it counts the orders it admits on top of the last read",
		end:   "admission control reads the orders in progress again",
	}
	for {
		if err := b.read(ctx, pool); ctx.Err() == nil {
			reads.note(logger, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

// failures logs a loop's failures when they start and when they end, not
// at every turn: a database outage is one warning, not four a second.
type failures struct {
	start, end string // the messages
	failing    bool
}

// note records the outcome of one turn.
func (f *failures) note(logger *slog.Logger, err error) {
	switch {
	case err != nil && !f.failing:
		logger.Warn(f.start, "error", err)
		f.failing = true
	case err == nil && f.failing:
		logger.Info(f.end)
		f.failing = false
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

// readDone records a read that began when before orders had been admitted,
// and adapts the limit to it. Orders admitted while the query ran may or
// may not be in n: they are counted on top (see pending), at worst twice
// until the next read.
func (b *backlog) readDone(before, n int64, oldest, waited time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seen, b.base, b.oldest, b.waited = n, before, oldest, waited
	b.limit.observe(time.Now(), b.pending(), waited)
}

// ageQuorum is how many orders in progress must have waited longer than
// the age bound for it to lower the limit: one slow order (a participant
// retrying, a group rebalancing) does not, at any load.
const ageQuorum = 10

// limit is how many orders admission control lets be in progress. It is
// MaxPending until ageQuorum orders in progress have waited longer than
// MaxPendingAge; then it drops to the share of the orders in progress (or
// of the limit, if lower) that would have waited MaxPendingAge (Little's
// law: at a steady throughput an order waits in proportion to the orders
// ahead of it), between four fifths and nine tenths of them, and grows
// back by a twentieth of itself a read (at least one order) while orders
// are on time. (Drops of up to half gained nothing in throughput or
// latency and made the recovery after a stall slower.) New orders are then admitted as fast as orders finish, at most,
// rather than refused wholesale until the backlog has drained and admitted
// a hundred at once again, in waves.
//
// A drop shows in the waits of orders admitted after it, not before, so
// after a drop the limit drops again only once the late orders are younger
// than the drop: a cooldown as long as the tenth oldest order's wait. (The
// wait is PostgreSQL's clock, the time since the drop the process's; an
// order admitted just before a drop but inserted after it counts as after,
// which can only bring the next drop a little early.)
type limit struct {
	max    float64       // MaxPending; noCeiling without one
	maxAge time.Duration // MaxPendingAge; 0 or less: the limit stays at max
	cur    float64
	cut    time.Time // when cur was last lowered; zero: never
}

// noCeiling stands for no MaxPending: a limit that growing back cannot
// overflow.
const noCeiling = math.MaxInt32

func newLimit(maxPending int, maxAge time.Duration) limit {
	l := limit{max: noCeiling, maxAge: maxAge}
	if maxPending > 0 {
		l.max = float64(maxPending)
	}
	l.cur = l.max
	return l
}

// observe adapts the limit to a read at now: pending orders in progress, of
// which the ageQuorum-th oldest has waited waited.
func (l *limit) observe(now time.Time, pending int64, waited time.Duration) {
	switch {
	case l.maxAge <= 0:
		l.cur = l.max
	case waited <= l.maxAge:
		l.cur = min(l.max, l.cur+max(1, l.cur/20))
	case !l.cut.IsZero() && waited >= now.Sub(l.cut):
		// Admitted before the last drop: they do not show its effect yet.
	default:
		share := min(0.9, max(0.8, l.maxAge.Seconds()/waited.Seconds()))
		l.cur = max(1, share*min(l.cur, float64(pending)))
		l.cut = now
	}
}

// bound is the limit in orders.
func (l *limit) bound() int64 { return int64(l.cur) }

// lowered reports whether the age bound holds the limit below MaxPending.
func (l *limit) lowered() bool { return l.cur < l.max }

// retryDelay is the wait a refusal asks for: a second on average, spread
// over half a second either way so that the clients refused in one burst
// do not all come back in the same instant.
func retryDelay() time.Duration {
	return 500*time.Millisecond + rand.N(time.Second)
}

// admit decides whether a new order may start while pending orders are in
// progress: not at the limit, past which the saga is not keeping up and
// an order accepted now would wait too long or end in TIMEOUT. pending
// counts the sagas in flight when the backlog was last read and the orders
// admitted since. The error is RESOURCE_EXHAUSTED with RetryInfo.
func admit(pending int64, l *limit) error {
	if pending < l.bound() {
		return nil
	}
	why := fmt.Sprintf("%d orders are in progress (limit %d)", pending, l.bound())
	if l.lowered() {
		why = fmt.Sprintf("%d orders are in progress (limit lowered to %d since orders waited longer than %s)", pending, l.bound(), l.maxAge)
	}
	st, err := status.New(codes.ResourceExhausted, "orders cannot keep up: "+why+"; nothing was written, retry later").
		WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retryDelay())})
	if err != nil {
		return status.Error(codes.ResourceExhausted, "orders cannot keep up: "+why)
	}
	return st.Err()
}

// admit applies admission control to a new order, and counts it in flight
// until the next refresh reads the backlog again (or the caller takes it
// back: [backlog.unadmit]). A refusal it returns is counted once the
// caller returns it ([backlog.refused]): the retry of an order already
// created is answered with that order instead.
func (b *backlog) admit() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := admit(b.pending(), &b.limit); err != nil {
		return err
	}
	b.admitted++
	return nil
}

// unadmit takes back an admission that started no saga: a retry answered
// with its order, or a call that failed. An admission counted in the last
// read's base is left alone: that read did not see an order for it either.
func (b *backlog) unadmit() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.admitted > b.base {
		b.admitted--
	}
}

// refused counts a refusal returned to a client.
func (b *backlog) refused() { b.rejected.Inc() }

// pending is the orders in flight as last read, plus those admitted since
// that read began. Callers hold b.mu.
func (b *backlog) pending() int64 { return b.seen + b.admitted - b.base }
