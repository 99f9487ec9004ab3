package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	"github.com/switchyard/switchyard/platform/testkit"
)

// With inventory stopped, sagas pile up: past SWITCHYARD_ORDERS_MAX_PENDING
// CreateOrder is RESOURCE_EXHAUSTED with RetryInfo and writes nothing,
// while the retry of an order already created still gets it back; once
// inventory is back and the backlog drains, orders are accepted again and
// every invariant holds.
func TestOverloadRefusesNewOrders(t *testing.T) {
	t.Parallel()
	// Only the count bound is under test here.
	s := startShop(t, "SWITCHYARD_ORDERS_MAX_PENDING=3", "SWITCHYARD_ORDERS_MAX_PENDING_AGE=0")
	cust, sku := s.customer(100_000), s.product(100, 100)
	s.stack.Stop("inventory")

	createKeyed := func(key string, quantity int64) (*ordersv1.CreateOrderResponse, error) {
		return s.orders.CreateOrder(ctx, &ordersv1.CreateOrderRequest{CustomerId: cust, Items: []*ordersv1.CreateOrderItem{item(sku, quantity)},
			IdempotencyKey: key})
	}
	create := func() (*ordersv1.CreateOrderResponse, error) { return createKeyed(uuid.NewString(), 1) }
	accepted := 0
	var refusal error
	firstKey, firstID := uuid.NewString(), ""
	// Admission control counts the orders it admitted since it last read
	// the backlog; one whose transaction was still running at that read
	// may be missed, so four may get in.
	testkit.WaitFor(t, time.Minute, "CreateOrder to be refused", func() bool {
		key := uuid.NewString()
		if accepted == 0 {
			key = firstKey
		}
		resp, err := createKeyed(key, 1)
		switch status.Code(err) {
		case codes.OK:
			if accepted == 0 {
				firstID = resp.GetOrder().GetOrderId()
			}
			accepted++
		case codes.ResourceExhausted:
			refusal = err
			return true
		default:
			t.Fatalf("CreateOrder: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
		return false
	})
	if accepted < 3 || accepted > 4 {
		t.Fatalf("refused after %d orders accepted, want 3 (or 4)", accepted)
	}
	var retry *errdetails.RetryInfo
	for _, d := range status.Convert(refusal).Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if retry == nil {
		t.Fatalf("refusal %v carries no RetryInfo", refusal)
	}
	// A retry of an order already created gets it back even now; its key
	// with another request is still a reused key.
	if resp, err := createKeyed(firstKey, 1); err != nil || resp.GetOrder().GetOrderId() != firstID {
		t.Fatalf("retry of the first order while refusing: %v, %v; want order %s back", resp.GetOrder().GetOrderId(), err, firstID)
	}
	if _, err := createKeyed(firstKey, 2); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("first order's key with another request while refusing: %v, want INVALID_ARGUMENT", err)
	}
	// Only the one refusal returned counts: not the retry answered with its
	// order, not the reused key.
	if n, _ := sum(scrape(t, s.stack.MetricsURL("orders")), "switchyard_orders_rejected_overload_total"); n != 1 {
		t.Fatalf("switchyard_orders_rejected_overload_total = %v after one refusal, want 1", n)
	}
	var stored int
	if err := s.check.Pool("orders").QueryRow(ctx, `SELECT count(*) FROM orders WHERE customer_id = $1`, cust).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != accepted {
		t.Fatalf("%d orders stored, %d accepted: a refused CreateOrder wrote something", stored, accepted)
	}
	var keys int
	if err := s.check.Pool("orders").QueryRow(ctx, `SELECT count(*) FROM idempotency_keys WHERE scope = 'CreateOrder/' || $1`, cust).Scan(&keys); err != nil {
		t.Fatal(err)
	}
	if keys != accepted {
		t.Fatalf("%d idempotency keys stored, %d orders accepted: a refused CreateOrder kept its key", keys, accepted)
	}
	// Nor does a refusal write a key it then rolls back: it does not wait
	// for a lock that holds the keys' table still.
	lock, err := s.check.Pool("orders").Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `LOCK TABLE idempotency_keys IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	held, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = s.orders.CreateOrder(held, &ordersv1.CreateOrderRequest{CustomerId: cust, Items: []*ordersv1.CreateOrderItem{item(sku, 1)},
		IdempotencyKey: uuid.NewString()})
	cancel()
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("CreateOrder with a new key while refusing and the keys' table is locked: %v, want RESOURCE_EXHAUSTED at once", err)
	}

	if err := s.stack.StartService("inventory"); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 2*time.Minute, "CreateOrder to be accepted again", func() bool {
		_, err := create()
		if c := status.Code(err); c != codes.OK && c != codes.ResourceExhausted && c != codes.Unavailable {
			t.Fatalf("CreateOrder: %v", err)
		}
		return err == nil
	})
	s.quietAndValid()
}
