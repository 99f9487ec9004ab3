// Package orders takes orders and orchestrates the order saga: reserve
// stock, charge payment, confirm — or compensate and cancel, on a rejection,
// a decline, a step deadline or the customer's request.
package orders

import (
	"cmp"
	"context"
	"embed"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/idempotency"
	"github.com/switchyard/switchyard/platform/pagetoken"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/validate"
	"github.com/switchyard/switchyard/platform/watch"
	"github.com/switchyard/switchyard/services/rules"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Failure reasons of a cancelled order that orders itself decides.
const (
	ReasonCancelledByCustomer = "CANCELLED_BY_CUSTOMER"
	ReasonTimeout             = "TIMEOUT"
)

// Options are the saga's settings.
type Options struct {
	// StepTimeout is how long a saga step waits for its reply before the
	// order is compensated and cancelled with TIMEOUT (default 30s).
	StepTimeout time.Duration
	// SweepInterval is how often expired steps are looked for (default 250ms).
	SweepInterval time.Duration
	// MaxPending and MaxPendingAge are admission control: CreateOrder is
	// refused (RESOURCE_EXHAUSTED with RetryInfo, nothing written) at a
	// limit of orders in progress, rather than accepted to time out. The
	// limit is MaxPending (default 100) until 10 orders in progress have
	// waited longer than MaxPendingAge (default 1s); then it drops to the
	// share of the orders in progress that would have waited MaxPendingAge,
	// and grows back while orders are on time. Past capacity every
	// accepted order queues behind the pending ones: MaxPending bounds the
	// queue, MaxPendingAge the wait, and new orders are admitted as orders
	// finish. Counting 10 means one slow order does not lower the limit.
	// A negative MaxPending is no ceiling (the age bound still lowers the
	// limit); a negative MaxPendingAge keeps the limit at MaxPending.
	MaxPending    int
	MaxPendingAge time.Duration
}

// OptionsFromEnv reads SWITCHYARD_SAGA_STEP_TIMEOUT,
// SWITCHYARD_ORDERS_MAX_PENDING and SWITCHYARD_ORDERS_MAX_PENDING_AGE
// (0 turns a limit off).
func OptionsFromEnv(getenv func(string) string) (Options, error) {
	var o Options
	if v := getenv("SWITCHYARD_SAGA_STEP_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return o, fmt.Errorf("SWITCHYARD_SAGA_STEP_TIMEOUT=%q: want a positive duration like 30s", v)
		}
		o.StepTimeout = d
	}
	if v := getenv("SWITCHYARD_ORDERS_MAX_PENDING"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return o, fmt.Errorf("SWITCHYARD_ORDERS_MAX_PENDING=%q: want a count, or 0 for no limit", v)
		}
		o.MaxPending = cmp.Or(n, -1)
	}
	if v := getenv("SWITCHYARD_ORDERS_MAX_PENDING_AGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return o, fmt.Errorf("SWITCHYARD_ORDERS_MAX_PENDING_AGE=%q: want a duration like 10s, or 0 for no limit", v)
		}
		o.MaxPendingAge = cmp.Or(d, -1)
	}
	return o, nil
}

// withDefaults fills in what o leaves unset (zero).
func (o Options) withDefaults() Options {
	if o.StepTimeout <= 0 {
		o.StepTimeout = 30 * time.Second
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = 250 * time.Millisecond
	}
	if o.MaxPending == 0 {
		o.MaxPending = 100
	}
	if o.MaxPendingAge == 0 {
		// At twice capacity it halved accepted orders' p99 against the
		// count bound alone, for a few percent of throughput
		// (docs/benchmarks.md, "Overload").
		o.MaxPendingAge = time.Second
	}
	return o
}

// Spec describes the orders service: it consumes the participants' replies.
func Spec(o Options) service.Spec {
	o = o.withDefaults()
	return service.Spec{
		Name: "orders", Port: 50052, Migrations: migrations, Emits: true,
		Setup: func(env *service.Env) error {
			s := &server{env: env, opts: o, changes: env.WatchHub(changeChannel), metrics: newSagaMetrics(), backlog: newBacklog(o)}
			env.Metrics.Registry.MustRegister(s.metrics.outcomes, s.metrics.duration)
			env.Metrics.Registry.MustRegister(s.backlog.collectors()...)
			env.Go(func(ctx context.Context) error {
				return s.backlog.refresh(ctx, env.Pool, 200*time.Millisecond, env.Logger)
			})
			ordersv1.RegisterOrderServiceServer(env.Server, s)
			consumer.Handle(env.Consumer, s.onStockReserved)
			consumer.Handle(env.Consumer, s.onStockRejected)
			consumer.Handle(env.Consumer, s.onPaymentCaptured)
			consumer.Handle(env.Consumer, s.onPaymentDeclined)
			env.Go(s.sweepDeadlines)
			return nil
		},
	}
}

// changeChannel carries the id of every order that changed.
const changeChannel = "switchyard_order_changed"

type server struct {
	ordersv1.UnimplementedOrderServiceServer
	env     *service.Env
	opts    Options
	changes *watch.Hub
	metrics sagaMetrics
	backlog *backlog
}

func (s *server) CreateOrder(ctx context.Context, req *ordersv1.CreateOrderRequest) (*ordersv1.CreateOrderResponse, error) {
	var v validate.Violations
	v.UUID("customer_id", req.GetCustomerId())
	v.Length("idempotency_key", req.GetIdempotencyKey(), 0, 200)
	switch n := len(req.GetItems()); {
	case n == 0:
		v.Add("items", "must hold at least one item")
	case n > 100:
		v.Add("items", "must hold at most 100 items")
	default:
		seen := map[string]bool{}
		for i, it := range req.GetItems() {
			field := "items[" + strconv.Itoa(i) + "]"
			rules.SKU(&v, field+".sku", it.GetSku())
			v.Range(field+".quantity", it.GetQuantity(), 1, 1000)
			if seen[it.GetSku()] {
				v.Add(field+".sku", "appears twice; combine the quantities")
			}
			seen[it.GetSku()] = true
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	scope := "CreateOrder/" + req.GetCustomerId()
	if refusal := s.backlog.admit(); refusal != nil {
		// The retry of an order already created gets that order, not a
		// refusal saying that nothing was written. Found by a read: a
		// refusal writes nothing, not even a key rolled back, while the
		// database is busiest.
		resp, found, err := idempotency.Lookup[*ordersv1.CreateOrderResponse](ctx, s.env.Pool, scope, req.GetIdempotencyKey(), req)
		if err != nil || found {
			return resp, err
		}
		s.backlog.refused()
		return nil, refusal
	}
	var resp *ordersv1.CreateOrderResponse
	created := false
	err := pgx.BeginFunc(ctx, s.env.Pool, func(tx pgx.Tx) error {
		var err error
		var replayed bool
		resp, replayed, err = idempotency.Do(ctx, tx, scope, req.GetIdempotencyKey(), req, func() (*ordersv1.CreateOrderResponse, error) {
			id := uuid.NewString()
			cmd := &inventoryv1.ReserveStock{OrderId: id}
			skus := make([]string, len(req.GetItems()))
			quantities := make([]int64, len(req.GetItems()))
			for i, it := range req.GetItems() {
				skus[i], quantities[i] = it.GetSku(), it.GetQuantity()
				cmd.Lines = append(cmd.Lines, &inventoryv1.StockLine{Sku: it.GetSku(), Quantity: it.GetQuantity()})
			}
			// The order, its lines, its first command and the read of the
			// order as stored: one round trip.
			b := &pgx.Batch{}
			b.Queue(`INSERT INTO orders (order_id, customer_id, status, saga_step, saga_deadline)
				VALUES ($1, $2, 'PENDING', 'RESERVING', now() + make_interval(secs => $3))`,
				id, req.GetCustomerId(), s.opts.StepTimeout.Seconds())
			b.Queue(`INSERT INTO order_items (order_id, line, sku, quantity)
				SELECT $1, l.n - 1, l.sku, l.quantity FROM unnest($2::text[], $3::bigint[]) WITH ORDINALITY AS l(sku, quantity, n)`,
				id, skus, quantities)
			if err := s.env.Outbox.Queue(ctx, b, events(id, []proto.Message{cmd})...); err != nil {
				return nil, err
			}
			orders, err := sendAndLoad(ctx, tx, b, []string{id})
			if err != nil {
				return nil, err
			}
			return &ordersv1.CreateOrderResponse{Order: orders[0]}, nil
		})
		created = err == nil && !replayed
		return err
	})
	if !created || err != nil {
		s.backlog.unadmit() // no saga started
	}
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (s *server) GetOrder(ctx context.Context, req *ordersv1.GetOrderRequest) (*ordersv1.GetOrderResponse, error) {
	var v validate.Violations
	v.UUID("order_id", req.GetOrderId())
	if err := v.Err(); err != nil {
		return nil, err
	}
	o, err := loadOrder(ctx, s.env.Pool, req.GetOrderId())
	if err != nil {
		return nil, err
	}
	return &ordersv1.GetOrderResponse{Order: o}, nil
}

func (s *server) ListOrders(ctx context.Context, req *ordersv1.ListOrdersRequest) (*ordersv1.ListOrdersResponse, error) {
	var v validate.Violations
	v.UUID("customer_id", req.GetCustomerId())
	v.Range("page_size", int64(req.GetPageSize()), 0, 100)
	afterTime, afterID := time.Now().Add(24*time.Hour), "ffffffff-ffff-ffff-ffff-ffffffffffff"
	if t := req.GetPageToken(); t != "" {
		ts, id, ok := pagetoken.Decode(t)
		if !ok {
			v.Add("page_token", "is not a token returned by ListOrders")
		}
		afterTime, afterID = ts, id
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = 20
	}
	rows, err := s.env.Pool.Query(ctx, `SELECT order_id::text FROM orders WHERE customer_id = $1 AND (create_time, order_id) < ($2, $3)
		ORDER BY create_time DESC, order_id DESC LIMIT $4`, req.GetCustomerId(), afterTime, afterID, size+1)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	more := len(ids) > size
	if more {
		ids = ids[:size]
	}
	orders, err := loadOrders(ctx, s.env.Pool, ids)
	if err != nil {
		return nil, err
	}
	resp := &ordersv1.ListOrdersResponse{Orders: orders}
	if more {
		last := orders[size-1]
		resp.NextPageToken = pagetoken.Encode(last.GetCreateTime().AsTime(), last.GetOrderId())
	}
	return resp, nil
}

func (s *server) CancelOrder(ctx context.Context, req *ordersv1.CancelOrderRequest) (*ordersv1.CancelOrderResponse, error) {
	var v validate.Violations
	v.UUID("order_id", req.GetOrderId())
	v.Length("reason", req.GetReason(), 0, 500)
	if err := v.Err(); err != nil {
		return nil, err
	}
	var o *ordersv1.Order
	var out outcome
	err := pgx.BeginFunc(ctx, s.env.Pool, func(tx pgx.Tx) error {
		st, err := lockSaga(ctx, tx, req.GetOrderId())
		if err != nil {
			return err
		}
		if st.status != statusCancelled { // cancelling twice returns the cancelled order
			reason := req.GetReason()
			if reason == "" {
				reason = "cancelled by customer"
			}
			if out, err = s.apply(ctx, tx, nil, st, happening{input: cancelledByCustomer, reason: reason}); err != nil {
				return err
			}
		}
		o, err = loadOrder(ctx, tx, req.GetOrderId())
		return err
	})
	if err != nil {
		return nil, err
	}
	s.committed(out)
	return &ordersv1.CancelOrderResponse{Order: o}, nil
}

func (s *server) WatchOrder(req *ordersv1.WatchOrderRequest, stream ordersv1.OrderService_WatchOrderServer) error {
	var v validate.Violations
	v.UUID("order_id", req.GetOrderId())
	if err := v.Err(); err != nil {
		return err
	}
	ctx := stream.Context()
	var last *ordersv1.Order
	return s.changes.Follow(ctx, req.GetOrderId(), s.env.Config.WatchRecheck, s.env.Stopping(), func() (bool, error) {
		// One round trip per wake-up: the order as it is now, sent if it
		// differs from what the stream last sent.
		db := s.changes.DB() // not env.Pool: streams must not take the consumers' connections
		o, err := loadOrder(ctx, db, req.GetOrderId())
		if err != nil || proto.Equal(o, last) {
			return false, err
		}
		last = o
		if err := stream.Send(&ordersv1.WatchOrderResponse{Order: o}); err != nil {
			return false, err
		}
		return o.GetStatus() != ordersv1.OrderStatus_ORDER_STATUS_PENDING, nil
	})
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

var statuses = map[string]ordersv1.OrderStatus{
	statusPending:   ordersv1.OrderStatus_ORDER_STATUS_PENDING,
	statusConfirmed: ordersv1.OrderStatus_ORDER_STATUS_CONFIRMED,
	statusCancelled: ordersv1.OrderStatus_ORDER_STATUS_CANCELLED,
}

// loadOrder reads an order and its items.
func loadOrder(ctx context.Context, q querier, id string) (*ordersv1.Order, error) {
	orders, err := loadOrders(ctx, q, []string{id})
	if err != nil {
		return nil, err
	}
	return orders[0], nil
}

// loadOrders reads orders and their items in one round trip, in the order
// of ids; a missing id is NOT_FOUND.
func loadOrders(ctx context.Context, q querier, ids []string) ([]*ordersv1.Order, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	return sendAndLoad(ctx, q, &pgx.Batch{}, ids)
}

// sendAndLoad sends b's statements followed by the reads of loadOrders, in
// one round trip, and returns the orders as b left them.
func sendAndLoad(ctx context.Context, q querier, b *pgx.Batch, ids []string) ([]*ordersv1.Order, error) {
	prior := b.Len()
	b.Queue(`SELECT order_id::text, customer_id::text, status, failure_reason, total_minor, create_time, update_time
		FROM orders WHERE order_id = ANY($1::uuid[])`, ids)
	b.Queue(`SELECT order_id::text, sku, quantity, unit_price_minor FROM order_items
		WHERE order_id = ANY($1::uuid[]) ORDER BY order_id, line`, ids)
	br := q.SendBatch(ctx, b)
	defer br.Close()
	for range prior {
		if _, err := br.Exec(); err != nil {
			return nil, err
		}
	}
	byID := make(map[string]*ordersv1.Order, len(ids))
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("load orders: %w", err)
	}
	for rows.Next() {
		o := &ordersv1.Order{}
		var st string
		var total int64
		var created, updated time.Time
		if err := rows.Scan(&o.OrderId, &o.CustomerId, &st, &o.FailureReason, &total, &created, &updated); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load orders: %w", err)
		}
		o.Status, o.Total, o.CreateTime, o.UpdateTime = statuses[st], rules.Money(total), timestamppb.New(created), timestamppb.New(updated)
		byID[o.OrderId] = o
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load orders: %w", err)
	}
	rows, err = br.Query()
	if err != nil {
		return nil, fmt.Errorf("load order items: %w", err)
	}
	for rows.Next() {
		var id string
		var price *int64
		it := &ordersv1.OrderItem{}
		if err := rows.Scan(&id, &it.Sku, &it.Quantity, &price); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load order items: %w", err)
		}
		if price != nil {
			it.UnitPrice = rules.Money(*price)
		}
		if o := byID[id]; o != nil {
			o.Items = append(o.Items, it)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load order items: %w", err)
	}
	if err := br.Close(); err != nil {
		return nil, fmt.Errorf("load orders: %w", err)
	}
	out := make([]*ordersv1.Order, len(ids))
	for i, id := range ids {
		if out[i] = byID[id]; out[i] == nil {
			return nil, status.Errorf(codes.NotFound, "order %s not found", id)
		}
	}
	return out, nil
}
