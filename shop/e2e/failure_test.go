package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	paymentsv1 "github.com/switchyard/switchyard/gen/go/switchyard/payments/v1"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/shop/registry"
)

// A participant (payments) stopped past the step deadline: the order is
// cancelled with TIMEOUT and its stock released; an order cancelled by the
// customer while pending is compensated; when payments comes back, its late
// captures are refunded and every invariant holds. Watch streams never
// recheck here: the cancellations reach them only as announced by
// CancelOrder and by the deadline sweep. The step deadline is the window
// in which the customer's cancel must land: long enough for a loaded
// machine, short enough not to drag the test out.
func TestTimeoutAndLateReply(t *testing.T) {
	t.Parallel()
	s := startShop(t, "SWITCHYARD_SAGA_STEP_TIMEOUT=10s", "SWITCHYARD_WATCH_RECHECK=1h")
	cust, sku := s.customer(10_000), s.product(1_000, 10)

	s.stack.Stop("payments")
	if code := s.stack.ExitCode("payments"); code != 0 {
		t.Fatalf("payments exited with %d after SIGTERM, want a clean 0", code)
	}
	timedOut := s.order(cust, "timeout", item(sku, 2))
	byCustomer := s.order(cust, "cancel-pending", item(sku, 3))
	wctx, stopWatch := context.WithTimeout(ctx, time.Minute)
	defer stopWatch()
	stream, err := s.orders.WatchOrder(wctx, &ordersv1.WatchOrderRequest{OrderId: byCustomer.GetOrderId()})
	if err != nil {
		t.Fatal(err)
	}
	if first, err := stream.Recv(); err != nil || first.GetOrder().GetStatus() != pending {
		t.Fatalf("WatchOrder first sent %v (%v), want the pending order", first, err)
	}
	s.waitStock(sku, 5, 5) // both orders reserved: the cancel must compensate a reservation
	resp := retry(t, func() (*ordersv1.CancelOrderResponse, error) {
		return s.orders.CancelOrder(ctx, &ordersv1.CancelOrderRequest{OrderId: byCustomer.GetOrderId()})
	})
	wantFinal(t, resp.GetOrder(), cancelled, "CANCELLED_BY_CUSTOMER")
	for {
		next, err := stream.Recv()
		if err != nil {
			t.Fatalf("WatchOrder after CancelOrder: %v, want the cancelled order (was the cancel announced?)", err)
		}
		if next.GetOrder().GetStatus() != pending {
			wantFinal(t, next.GetOrder(), cancelled, "CANCELLED_BY_CUSTOMER")
			break
		}
	}
	wantFinal(t, s.final(timedOut.GetOrderId()), cancelled, "TIMEOUT")
	s.waitStock(sku, 10, 0)

	if err := s.stack.StartService("payments"); err != nil {
		t.Fatal(err)
	}
	if err := s.stack.WaitServing(ctx, "payments"); err != nil {
		t.Fatal(err)
	}
	s.quietAndValid()
	// The late ChargePayment was captured after the deadline, then refunded.
	list := retry(t, func() (*paymentsv1.ListPaymentsResponse, error) {
		return s.payments.ListPayments(ctx, &paymentsv1.ListPaymentsRequest{CustomerId: cust})
	})
	kinds := map[paymentsv1.PaymentKind]int{}
	for _, p := range list.GetPayments() {
		if p.GetOrderId() == timedOut.GetOrderId() {
			kinds[p.GetKind()]++
		}
	}
	if kinds[paymentsv1.PaymentKind_PAYMENT_KIND_CAPTURE] != 1 || kinds[paymentsv1.PaymentKind_PAYMENT_KIND_REFUND] != 1 {
		t.Fatalf("timed-out order's payments %v, want its late capture and a refund", kinds)
	}
	s.wantBalance(cust, 10_000, "all of it back")
}

// A reply that arrives while orders is down, past its step's deadline, is
// applied when orders comes back, before the deadline sweep would cancel
// its order with TIMEOUT: the step had its reply in time, and the customer
// who paid gets the order.
func TestReplyWaitingThroughAnOutage(t *testing.T) {
	t.Parallel()
	s := startShop(t, "SWITCHYARD_SAGA_STEP_TIMEOUT=15s")
	cust, sku := s.customer(10_000), s.product(1_000, 10)
	s.stack.Stop("payments")
	o := s.order(cust, "outage", item(sku, 2))
	tr, err := s.stack.OpenTransport()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	waiting := func(group, topic string, want int64) func() bool {
		return func() bool {
			n, err := transport.Backlog(ctx, tr, group, topic)
			return err == nil && n >= want
		}
	}
	// ReserveStock and ChargePayment published: orders' relay has nothing
	// of this order left to send when it stops.
	testkit.WaitFor(t, time.Minute, "the charge to wait for payments", waiting("payments", "switchyard.order", 2))
	s.stack.Stop("orders")
	if err := s.stack.StartService("payments"); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, time.Minute, "the payment's reply to wait for orders", waiting("orders", "switchyard.payment", 1))
	db := s.check.Pool("orders")
	testkit.WaitFor(t, time.Minute, "the step's deadline to pass", func() bool {
		var passed bool
		return db.QueryRow(ctx, `SELECT saga_deadline < now() FROM orders WHERE order_id = $1`, o.GetOrderId()).Scan(&passed) == nil && passed
	})
	if err := s.stack.StartService("orders"); err != nil {
		t.Fatal(err)
	}
	if err := s.stack.WaitServing(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	wantFinal(t, s.final(o.GetOrderId()), confirmed, "")
	s.quietAndValid()
}

// Each service in turn is killed with SIGKILL during a burst of orders and
// restarted: every order still ends CONFIRMED or CANCELLED and every
// invariant holds.
func TestKillDuringBurst(t *testing.T) {
	t.Parallel()
	s := startShop(t, "SWITCHYARD_SAGA_STEP_TIMEOUT=5m")
	skus := []string{s.product(100, 40), s.product(250, 1_000)}
	custs := []string{s.customer(3_000), s.customer(1_000_000), s.customer(50_000)}
	var all []string
	for round, victim := range registry.Services {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 10; i++ {
					key := fmt.Sprintf("burst-%d-%d-%d", round, w, i)
					o := s.order(custs[(w+i)%3], key, item(skus[i%2], int64(1+i%3)))
					mu.Lock()
					all = append(all, o.GetOrderId())
					mu.Unlock()
				}
			}()
		}
		time.Sleep(150 * time.Millisecond)
		s.stack.Kill(victim.Name)
		time.Sleep(300 * time.Millisecond)
		if err := s.stack.StartService(victim.Name); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if err := s.stack.WaitServing(ctx, victim.Name); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range all {
		if st := s.final(id).GetStatus(); st != confirmed && st != cancelled {
			t.Fatalf("order %s ended %s", id, st)
		}
	}
	if want := 40 * len(registry.Services); len(all) != want {
		t.Fatalf("%d orders placed, want %d", len(all), want)
	}
	s.quietAndValid()
}

// The checker is not a rubber stamp: tampering with any database is caught.
func TestInvariantCheckerCatchesViolations(t *testing.T) {
	t.Parallel()
	s := startShop(t)
	cust, sku := s.customer(10_000), s.product(100, 10)
	wantFinal(t, s.final(s.order(cust, "", item(sku, 1)).GetOrderId()), confirmed, "")
	s.quietAndValid()
	for _, tc := range []struct {
		service, tamper, undo, want string
	}{
		{"payments", `UPDATE accounts SET balance_minor = balance_minor + 1`, `UPDATE accounts SET balance_minor = balance_minor - 1`, "money"},
		{"inventory", `UPDATE reservations SET state = 'RELEASED'`, `UPDATE reservations SET state = 'COMMITTED'`, "stock"},
		{"orders", `UPDATE orders SET status = 'PENDING'`, `UPDATE orders SET status = 'CONFIRMED'`, "still PENDING"},
		{"notifications", `UPDATE notifications SET kind = 'ORDER_CANCELLED' WHERE kind = 'ORDER_CONFIRMED'`, `UPDATE notifications SET kind = 'ORDER_CONFIRMED' WHERE kind = 'ORDER_CANCELLED'`, "notifications"},
		{"payments", `DELETE FROM payments WHERE kind = 'CAPTURE'`, ``, "capture"},
	} {
		if _, err := s.check.Pool(tc.service).Exec(ctx, tc.tamper); err != nil {
			t.Fatal(err)
		}
		err := s.check.Check(ctx)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("after %q: Check = %v, want a violation mentioning %q", tc.tamper, err, tc.want)
		}
		if tc.undo != "" {
			if _, err := s.check.Pool(tc.service).Exec(ctx, tc.undo); err != nil {
				t.Fatal(err)
			}
		}
	}
}
