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
	live := &liveHandlers{work: o.Work, kind: o.WorkKind}
	consumer.Handle(env.Consumer, live.registered)
	consumer.Handle(env.Consumer, live.confirmed)
	consumer.Handle(env.Consumer, live.cancelled)
	env.Go(r.run)
	return nil
}

// liveHandlers apply events for the service's own group: they score
// confirmed orders and update the live projections, and, while a rebuild
// runs, its new projections too (events it has already replayed are
// skipped there).
type liveHandlers struct {
	work time.Duration
	kind WorkKind
}

// targets returns the schemas an event of the live group goes to: live,
// and a running rebuild's from its from_time on. The rebuild's row is
// read FOR KEY SHARE, so a swap (which locks it FOR UPDATE) waits for this
// transaction, while progress updates of the row do not.
func targets(ctx context.Context, tx pgx.Tx, md consumer.Metadata) ([]string, error) {
	schemas := []string{liveSchema}
	var schema string
	var from *time.Time
	err := tx.QueryRow(ctx, `SELECT schema_name, from_time FROM rebuilds WHERE state = 'RUNNING' FOR KEY SHARE`).Scan(&schema, &from)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return schemas, nil
	case err != nil:
		return nil, fmt.Errorf("look for a running rebuild: %w", err)
	}
	if from == nil || !md.Time.Before(*from) {
		schemas = append(schemas, schema)
	}
	return schemas, nil
}

func (h *liveHandlers) registered(ctx context.Context, tx pgx.Tx, ev *customersv1.CustomerRegistered, md consumer.Metadata) error {
	id, err := eventUUID(ev.GetCustomer().GetCustomerId(), "customer_id")
	if err != nil {
		return err
	}
	return gatherLive(ctx, tx, md, change{eventID: md.ID.String(), customerID: id})
}

func (h *liveHandlers) confirmed(ctx context.Context, tx pgx.Tx, ev *ordersv1.OrderConfirmed, md consumer.Metadata) error {
	c, o, err := confirmation(ev, md)
	if err != nil {
		return err
	}
	// Score first, before the rebuild's row is locked: the work is long.
	var scored bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM order_scores WHERE order_id = $1)`, c.orderID).Scan(&scored); err != nil {
		return fmt.Errorf("look up score of %s: %w", c.orderID, err)
	}
	if !scored {
		f := c.apply(OrderFact{})
		score := Score(f.Lines, f.TotalMinor, h.kind, h.work)
		if _, err := tx.Exec(ctx, `INSERT INTO order_scores (order_id, customer_id, score, event_id) VALUES ($1, $2, $3, $4)
			ON CONFLICT (order_id) DO NOTHING`, c.orderID, o.GetCustomerId(), score, md.ID); err != nil {
			return fmt.Errorf("store score of %s: %w", c.orderID, err)
		}
	}
	return h.project(ctx, tx, md, c)
}

func (h *liveHandlers) cancelled(ctx context.Context, tx pgx.Tx, ev *ordersv1.OrderCancelled, md consumer.Metadata) error {
	c, err := cancellation(ev, md)
	if err != nil {
		return err
	}
	return h.project(ctx, tx, md, c)
}

func (h *liveHandlers) project(ctx context.Context, tx pgx.Tx, md consumer.Metadata, c orderChange) error {
	return gatherLive(ctx, tx, md, change{eventID: c.eventID, order: &c})
}

// liveSchemaKey keys a live transaction's gathered changes for one schema.
type liveSchemaKey string

// gatherLive adds an event's change to what its transaction projects into
// each target schema, in one go after its last handler (consumer.Gather):
// so a batch takes the projections' row locks only at its end, after every
// order in it was scored, and a rebuild's replay, writing the same new
// tables, does not wait out a whole batch of scoring for them.
func gatherLive(ctx context.Context, tx pgx.Tx, md consumer.Metadata, c change) error {
	schemas, err := targets(ctx, tx, md)
	if err != nil {
		return err
	}
	for _, schema := range schemas {
		g, err := consumer.Gather(md, liveSchemaKey(schema), func() *[]change { return &[]change{} },
			func(ctx context.Context, tx pgx.Tx, changes *[]change) error {
				return project(ctx, tx, schema, *changes)
			})
		if err != nil {
			return err
		}
		*g = append(*g, c)
	}
	return nil
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
