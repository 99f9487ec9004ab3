// Package analytics turns the shop's events into read models, off the
// order's critical path: a score per confirmed order (deliberately heavy
// work, done once), sales per SKU, outcomes by failure reason and
// per-customer summaries. The projections can be rebuilt from the
// retained events while the live ones keep serving (see rebuild.go).
package analytics

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	analyticsv1 "github.com/switchyard/switchyard/gen/go/switchyard/analytics/v1"
	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	moneyv1 "github.com/switchyard/switchyard/gen/go/switchyard/money/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/validate"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Options tune the service.
type Options struct {
	// Work is the time the scoring of one confirmed order costs
	// (SWITCHYARD_ANALYTICS_WORK, default 20ms; 0 turns the work off).
	Work time.Duration
	// WorkKind is what that time is spent on (SWITCHYARD_ANALYTICS_WORK_KIND,
	// default WorkCPU).
	WorkKind WorkKind
	// RebuildPoll is how often each instance looks at the running rebuild:
	// to join or leave its replay, record its progress and swap it in
	// (default 1s).
	RebuildPoll time.Duration

	// scored, if set, is called each time an order's score is computed
	// (tests count the work).
	scored func(orderID string)
}

// DefaultWork is the default cost of scoring one order.
const DefaultWork = 20 * time.Millisecond

// OptionsFromEnv reads SWITCHYARD_ANALYTICS_WORK and
// SWITCHYARD_ANALYTICS_WORK_KIND.
func OptionsFromEnv(getenv func(string) string) (Options, error) {
	o := Options{Work: DefaultWork, WorkKind: WorkCPU}
	if v := getenv("SWITCHYARD_ANALYTICS_WORK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return o, fmt.Errorf("SWITCHYARD_ANALYTICS_WORK=%q: want a duration such as 20ms (0 for none)", v)
		}
		o.Work = d
	}
	if v := getenv("SWITCHYARD_ANALYTICS_WORK_KIND"); v != "" {
		k, err := ParseWorkKind(v)
		if err != nil {
			return o, fmt.Errorf("SWITCHYARD_ANALYTICS_WORK_KIND: %w", err)
		}
		o.WorkKind = k
	}
	return o, nil
}

// Spec describes the analytics service: it consumes registrations and
// order outcomes in its own group and never sends anything back, so the
// saga never waits for it.
func Spec(o Options) service.Spec {
	if o.RebuildPoll <= 0 {
		o.RebuildPoll = time.Second
	}
	return service.Spec{Name: "analytics", Port: 50056, Migrations: migrations,
		Setup: func(env *service.Env) error { return setup(env, o) }}
}

func setup(env *service.Env, o Options) error {
	s := &server{env: env}
	r := &rebuilder{env: env, poll: o.RebuildPoll}
	analyticsv1.RegisterAnalyticsServiceServer(env.Server, s)
	s.rebuilds = r
	live := &liveHandlers{work: o.Work, kind: o.WorkKind, memo: newScoreMemo(scoreMemoSize), scored: o.scored}
	consumer.Handle(env.Consumer, live.registered)
	consumer.Handle(env.Consumer, live.confirmed)
	consumer.Handle(env.Consumer, live.cancelled)
	env.Go(r.run)
	return nil
}

// liveHandlers apply events for the service's own group: they score
// confirmed orders and update the live projections, and, while a rebuild
// runs, its new projections too (events it has already replayed are
// skipped there). After a rebuild from a from_time, the live projections
// take only events from that time on, as the replay did.
type liveHandlers struct {
	work   time.Duration
	kind   WorkKind
	memo   *scoreMemo
	scored func(orderID string)
}

func (h *liveHandlers) registered(_ context.Context, _ pgx.Tx, ev *customersv1.CustomerRegistered, md consumer.Metadata) error {
	id, err := eventUUID(ev.GetCustomer().GetCustomerId(), "customer_id")
	if err != nil {
		return err
	}
	return gatherLive(md, change{eventID: md.ID.String(), customerID: id})
}

func (h *liveHandlers) confirmed(ctx context.Context, tx pgx.Tx, ev *ordersv1.OrderConfirmed, md consumer.Metadata) error {
	c, o, err := confirmation(ev, md)
	if err != nil {
		return err
	}
	// Scoring happens here, in the handler; the projections, and the
	// rebuild's row, only at the end of the batch (gatherLive).
	var scored bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM order_scores WHERE order_id = $1)`, c.orderID).Scan(&scored); err != nil {
		return fmt.Errorf("look up score of %s: %w", c.orderID, err)
	}
	if !scored {
		score, ok := h.memo.get(c.orderID)
		if !ok {
			f := c.apply(OrderFact{})
			score = Score(f.Lines, f.TotalMinor, h.kind, h.work)
			h.memo.put(c.orderID, score)
			if h.scored != nil {
				h.scored(c.orderID)
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO order_scores (order_id, customer_id, score, event_id) VALUES ($1, $2, $3, $4)
			ON CONFLICT (order_id) DO NOTHING`, c.orderID, o.GetCustomerId(), score, md.ID); err != nil {
			return fmt.Errorf("store score of %s: %w", c.orderID, err)
		}
	}
	return gatherLive(md, change{eventID: c.eventID, order: &c})
}

func (h *liveHandlers) cancelled(_ context.Context, _ pgx.Tx, ev *ordersv1.OrderCancelled, md consumer.Metadata) error {
	c, err := cancellation(ev, md)
	if err != nil {
		return err
	}
	return gatherLive(md, change{eventID: c.eventID, order: &c})
}

// liveGathered is the Gather key of what a live transaction projects.
type liveGathered struct{}

// gatherLive adds an event's change to what its transaction projects, in
// one go after its last handler (consumer.Gather): so a batch takes the
// projections' row locks, and the running rebuild's row, only at its end,
// after every order in it was scored, and neither a rebuild's replay
// (writing the same new tables) nor a swap waits out a whole batch of
// scoring.
func gatherLive(md consumer.Metadata, c change) error {
	g, err := consumer.Gather(md, liveGathered{}, func() *gathered { return &gathered{} }, flushLive)
	if err != nil {
		return err
	}
	g.add(md, c)
	return nil
}

// flushLive projects a live transaction's changes into the live schema
// and, while a rebuild runs, into its new one, each from its from_time
// on. The running rebuild's row is read FOR KEY SHARE, so a swap (which
// locks it FOR UPDATE) waits for this transaction, while progress
// updates of the row do not. Live's own from_time is read after that
// lock: once a swap is committed, this reads the new live schema's.
func flushLive(ctx context.Context, tx pgx.Tx, g *gathered) error {
	// One round trip: a batch's statements run one after the other, each
	// seeing what was committed when it starts.
	var rebuild string
	var rebuildFrom, liveFrom *time.Time
	batch := &pgx.Batch{}
	batch.Queue(`SELECT schema_name, from_time FROM rebuilds WHERE state = 'RUNNING' FOR KEY SHARE`).QueryRow(func(r pgx.Row) error {
		if err := r.Scan(&rebuild, &rebuildFrom); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("look for a running rebuild: %w", err)
		}
		return nil
	})
	batch.Queue(`SELECT from_time FROM rebuilds WHERE state = 'SWAPPED' ORDER BY finish_time DESC LIMIT 1`).QueryRow(func(r pgx.Row) error {
		if err := r.Scan(&liveFrom); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("read the live projections' from_time: %w", err)
		}
		return nil
	})
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return err
	}
	if err := project(ctx, tx, liveSchema, g.since(liveFrom)); err != nil {
		return err
	}
	if rebuild == "" {
		return nil
	}
	return project(ctx, tx, rebuild, g.since(rebuildFrom))
}

// gathered is what one transaction has gathered to project.
type gathered struct {
	changes []change
	times   []time.Time // each event's time, for from_time
}

func (g *gathered) add(md consumer.Metadata, c change) {
	g.changes = append(g.changes, c)
	g.times = append(g.times, md.Time)
}

// since returns the changes of events from from on (all if from is nil).
func (g *gathered) since(from *time.Time) []change {
	if from == nil {
		return g.changes
	}
	var changes []change
	for i, c := range g.changes {
		if !g.times[i].Before(*from) {
			changes = append(changes, c)
		}
	}
	return changes
}

// eventUUID checks an id carried by an event; a malformed one can never
// be applied, so the event is dead-lettered at once.
func eventUUID(id, field string) (string, error) {
	u, err := uuid.Parse(id)
	if err != nil {
		return "", consumer.Permanent(fmt.Errorf("event's %s %q: %w", field, id, err))
	}
	return u.String(), nil
}

// confirmation turns an OrderConfirmed into its projection change.
func confirmation(ev *ordersv1.OrderConfirmed, md consumer.Metadata) (orderChange, *ordersv1.Order, error) {
	o := ev.GetOrder()
	orderID, err := eventUUID(o.GetOrderId(), "order_id")
	if err != nil {
		return orderChange{}, nil, err
	}
	customerID, err := eventUUID(o.GetCustomerId(), "customer_id")
	if err != nil {
		return orderChange{}, nil, err
	}
	lines := make([]Line, 0, len(o.GetItems()))
	for _, it := range o.GetItems() {
		lines = append(lines, Line{SKU: it.GetSku(), Units: it.GetQuantity(), RevenueMin: it.GetQuantity() * it.GetUnitPrice().GetAmountMinor()})
	}
	total := o.GetTotal().GetAmountMinor()
	return orderChange{eventID: md.ID.String(), orderID: orderID, shard: md.Partition,
		apply: func(f OrderFact) OrderFact { return f.Confirm(customerID, lines, total) }}, o, nil
}

// cancellation turns an OrderCancelled into its projection change.
func cancellation(ev *ordersv1.OrderCancelled, md consumer.Metadata) (orderChange, error) {
	o := ev.GetOrder()
	orderID, err := eventUUID(o.GetOrderId(), "order_id")
	if err != nil {
		return orderChange{}, err
	}
	customerID, err := eventUUID(o.GetCustomerId(), "customer_id")
	if err != nil {
		return orderChange{}, err
	}
	reason := o.GetFailureReason()
	return orderChange{eventID: md.ID.String(), orderID: orderID, shard: md.Partition,
		apply: func(f OrderFact) OrderFact { return f.Cancel(customerID, reason) }}, nil
}

type server struct {
	analyticsv1.UnimplementedAnalyticsServiceServer
	env      *service.Env
	rebuilds *rebuilder
}

func usd(minor int64) *moneyv1.Money { return &moneyv1.Money{Currency: "USD", AmountMinor: minor} }

// readLive runs fn in a read-only snapshot, so that a report's parts agree
// with each other.
func (s *server) readLive(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, s.env.Pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
}

func (s *server) GetSalesReport(ctx context.Context, _ *analyticsv1.GetSalesReportRequest) (*analyticsv1.GetSalesReportResponse, error) {
	r := &analyticsv1.SalesReport{Revenue: usd(0)}
	err := s.readLive(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT outcome, reason, sum(orders)::bigint, sum(revenue_minor)::bigint FROM `+table(liveSchema, "outcomes")+`
			GROUP BY outcome, reason HAVING sum(orders) <> 0 ORDER BY outcome, reason`)
		if err != nil {
			return fmt.Errorf("read outcomes: %w", err)
		}
		var outcome, reason string
		var orders, revenue int64
		if _, err := pgx.ForEachRow(rows, []any{&outcome, &reason, &orders, &revenue}, func() error {
			switch Outcome(outcome) {
			case OutcomeConfirmed:
				r.OrdersConfirmed += orders
				r.Revenue.AmountMinor += revenue
			case OutcomeCancelled:
				r.OrdersCancelled = append(r.OrdersCancelled, &analyticsv1.CancelledOrders{FailureReason: reason, Orders: orders})
			}
			return nil
		}); err != nil {
			return fmt.Errorf("read outcomes: %w", err)
		}
		rows, err = tx.Query(ctx, `SELECT sku, sum(units)::bigint, sum(revenue_minor)::bigint FROM `+table(liveSchema, "sku_sales")+`
			GROUP BY sku HAVING sum(units) <> 0 ORDER BY sku`)
		if err != nil {
			return fmt.Errorf("read sales: %w", err)
		}
		var sku string
		var units int64
		_, err = pgx.ForEachRow(rows, []any{&sku, &units, &revenue}, func() error {
			r.Skus = append(r.Skus, &analyticsv1.SkuSales{Sku: sku, UnitsSold: units, Revenue: usd(revenue)})
			return nil
		})
		if err != nil {
			return fmt.Errorf("read sales: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &analyticsv1.GetSalesReportResponse{Report: r}, nil
}

func (s *server) GetCustomerSummary(ctx context.Context, req *analyticsv1.GetCustomerSummaryRequest) (*analyticsv1.GetCustomerSummaryResponse, error) {
	var v validate.Violations
	v.UUID("customer_id", req.GetCustomerId())
	if err := v.Err(); err != nil {
		return nil, err
	}
	var rows, confirmed, cancelled, spent int64
	err := s.env.Pool.QueryRow(ctx, `SELECT count(*), coalesce(sum(orders_confirmed), 0)::bigint, coalesce(sum(orders_cancelled), 0)::bigint,
		coalesce(sum(spent_minor), 0)::bigint FROM `+table(liveSchema, "customers")+` WHERE customer_id = $1`, req.GetCustomerId()).
		Scan(&rows, &confirmed, &cancelled, &spent)
	if err != nil {
		return nil, fmt.Errorf("read summary of %s: %w", req.GetCustomerId(), err)
	}
	if rows == 0 {
		return nil, status.Errorf(codes.NotFound, "customer %s: no registration or order seen yet", req.GetCustomerId())
	}
	return &analyticsv1.GetCustomerSummaryResponse{Summary: &analyticsv1.CustomerSummary{
		CustomerId: req.GetCustomerId(), OrdersConfirmed: confirmed, OrdersCancelled: cancelled, TotalSpent: usd(spent),
	}}, nil
}

func (s *server) GetOrderScore(ctx context.Context, req *analyticsv1.GetOrderScoreRequest) (*analyticsv1.GetOrderScoreResponse, error) {
	var v validate.Violations
	v.UUID("order_id", req.GetOrderId())
	if err := v.Err(); err != nil {
		return nil, err
	}
	sc := &analyticsv1.OrderScore{OrderId: req.GetOrderId()}
	var at time.Time
	err := s.env.Pool.QueryRow(ctx, `SELECT customer_id::text, score, score_time FROM order_scores WHERE order_id = $1`, req.GetOrderId()).
		Scan(&sc.CustomerId, &sc.Score, &at)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "order %s: not scored (not confirmed, or not seen yet)", req.GetOrderId())
	}
	if err != nil {
		return nil, fmt.Errorf("read score of %s: %w", req.GetOrderId(), err)
	}
	sc.ScoreTime = timestamppb.New(at)
	return &analyticsv1.GetOrderScoreResponse{Score: sc}, nil
}
