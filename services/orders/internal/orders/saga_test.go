package orders

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"

	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	paymentsv1 "github.com/switchyard/switchyard/gen/go/switchyard/payments/v1"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/idempotency"
	"github.com/switchyard/switchyard/platform/migrate"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/watch"
)

// newTestServer returns the orders server on a fresh database, without
// its consumer, sweeper or admission refresh running.
func newTestServer(t *testing.T, o Options) (*server, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	pool := testkit.Pool(t, testkit.Database(t))
	if _, err := migrate.Apply(ctx, pool, migrations); err != nil {
		t.Fatal(err)
	}
	for _, m := range []func(context.Context, migrate.Querier) error{outbox.Migrate, idempotency.Migrate, watch.Migrate} {
		if err := m(ctx, pool); err != nil {
			t.Fatal(err)
		}
	}
	o = o.withDefaults()
	env := &service.Env{Pool: pool, Outbox: outbox.NewWriter(outbox.ModeCDC), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return &server{env: env, opts: o, changes: watch.NewHub(pool, changeChannel, nil, nil), metrics: newSagaMetrics(), backlog: newBacklog(o)}, pool
}

// pendingOrder stores an order waiting in step, with a deadline in a
// minute (or passed, if expired).
func pendingOrder(t *testing.T, pool *pgxpool.Pool, step string, expired bool) string {
	t.Helper()
	deadline := "now() + interval '1 minute'"
	if expired {
		deadline = "now() - interval '1 second'"
	}
	var id string
	if err := pool.QueryRow(context.Background(), `INSERT INTO orders (order_id, customer_id, status, saga_step, saga_deadline, total_minor)
		VALUES (gen_random_uuid(), gen_random_uuid(), 'PENDING', $1, `+deadline+`, 500) RETURNING order_id::text`, step).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// A saga's ending is counted once its transaction has committed, and only
// then: a consumer batch that rolls back (and is applied again one event
// at a time) counts nothing, the RPC's and the sweep's commits count one
// each, and a confirmed order cancelled later is not a second ending.
func TestEndingsCountedOnceCommitted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, pool := newTestServer(t, Options{})
	count := func(status, reason string) float64 {
		return testutil.ToFloat64(s.metrics.outcomes.WithLabelValues(status, reason))
	}

	charging := pendingOrder(t, pool, stepCharging, false)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.onPaymentCaptured(ctx, tx, &paymentsv1.PaymentCaptured{OrderId: charging}, consumer.Metadata{}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(statusConfirmed, ""); n != 0 {
		t.Fatalf("a confirmation rolled back was counted %v times", n)
	}

	cancelled := pendingOrder(t, pool, stepReserving, false)
	if _, err := s.CancelOrder(ctx, &ordersv1.CancelOrderRequest{OrderId: cancelled}); err != nil {
		t.Fatal(err)
	}
	if n := count(statusCancelled, ReasonCancelledByCustomer); n != 1 {
		t.Fatalf("customer's cancellation counted %v times, want 1", n)
	}

	if _, err := pool.Exec(ctx, `UPDATE orders SET status = 'CONFIRMED', saga_step = 'DONE', saga_deadline = NULL WHERE order_id = $1`, charging); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CancelOrder(ctx, &ordersv1.CancelOrderRequest{OrderId: charging}); err != nil {
		t.Fatal(err)
	}
	if n := count(statusCancelled, ReasonCancelledByCustomer); n != 1 {
		t.Fatalf("cancelling a confirmed order counted as a saga ending (%v cancellations, want 1)", n)
	}

	pendingOrder(t, pool, stepCharging, true)
	if n, err := s.sweepOnce(ctx); err != nil || n != 1 {
		t.Fatalf("sweep: %d orders, %v; want the expired one", n, err)
	}
	if n := count(statusCancelled, ReasonTimeout); n != 1 {
		t.Fatalf("timeout counted %v times, want 1", n)
	}
}

// An order's update_time never goes back: a transaction that began before
// the last change (it waited for the row's lock) does not stamp it earlier.
func TestUpdateTimeNeverGoesBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, pool := newTestServer(t, Options{})
	id := pendingOrder(t, pool, stepReserving, false)
	later := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	if _, err := pool.Exec(ctx, `UPDATE orders SET update_time = $2 WHERE order_id = $1`, id, later); err != nil {
		t.Fatal(err)
	}
	resp, err := s.CancelOrder(ctx, &ordersv1.CancelOrderRequest{OrderId: id})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetOrder().GetUpdateTime().AsTime(); got.Before(later) {
		t.Fatalf("update_time went back from %v to %v", later, got)
	}
}

// A refusal's reason outside the contract's set is dead-lettered
// (permanent), not written as an order's failure_reason.
func TestUnknownFailureReasonIsPermanent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, pool := newTestServer(t, Options{})
	for _, c := range []struct {
		name   string
		step   string
		handle func(tx pgx.Tx, order string) error
		known  bool
	}{
		{"stock rejected, known", stepReserving, func(tx pgx.Tx, order string) error {
			return s.onStockRejected(ctx, tx, &inventoryv1.StockRejected{OrderId: order, Reason: "OUT_OF_STOCK"}, consumer.Metadata{})
		}, true},
		{"stock rejected, unknown", stepReserving, func(tx pgx.Tx, order string) error {
			return s.onStockRejected(ctx, tx, &inventoryv1.StockRejected{OrderId: order, Reason: "SOLD_TO_SOMEONE_ELSE"}, consumer.Metadata{})
		}, false},
		{"stock rejected, empty", stepReserving, func(tx pgx.Tx, order string) error {
			return s.onStockRejected(ctx, tx, &inventoryv1.StockRejected{OrderId: order}, consumer.Metadata{})
		}, false},
		{"payment declined, known", stepCharging, func(tx pgx.Tx, order string) error {
			return s.onPaymentDeclined(ctx, tx, &paymentsv1.PaymentDeclined{OrderId: order, Reason: "ACCOUNT_NOT_FOUND"}, consumer.Metadata{})
		}, true},
		{"payment declined, unknown", stepCharging, func(tx pgx.Tx, order string) error {
			return s.onPaymentDeclined(ctx, tx, &paymentsv1.PaymentDeclined{OrderId: order, Reason: "OUT_OF_STOCK"}, consumer.Metadata{})
		}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			order := pendingOrder(t, pool, c.step, false)
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return c.handle(tx, order) })
			var reason string
			if err := pool.QueryRow(ctx, `SELECT failure_reason FROM orders WHERE order_id = $1`, order).Scan(&reason); err != nil {
				t.Fatal(err)
			}
			if c.known {
				if err != nil || reason == "" {
					t.Fatalf("known reason: %v, failure_reason %q", err, reason)
				}
				return
			}
			if !errors.Is(err, consumer.ErrPermanent) || !errors.Is(err, errUnknownReason) || reason != "" {
				t.Fatalf("unknown reason: %v, failure_reason %q; want a permanent error and the order untouched", err, reason)
			}
		})
	}
}
