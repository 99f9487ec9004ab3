package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	notificationsv1 "github.com/switchyard/switchyard/gen/go/switchyard/notifications/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	paymentsv1 "github.com/switchyard/switchyard/gen/go/switchyard/payments/v1"
	"github.com/switchyard/switchyard/platform/testkit"
)

const (
	pending   = ordersv1.OrderStatus_ORDER_STATUS_PENDING
	confirmed = ordersv1.OrderStatus_ORDER_STATUS_CONFIRMED
	cancelled = ordersv1.OrderStatus_ORDER_STATUS_CANCELLED
)

func wantFinal(t *testing.T, o *ordersv1.Order, st ordersv1.OrderStatus, reason string) {
	t.Helper()
	if o.GetStatus() != st || o.GetFailureReason() != reason {
		t.Fatalf("order %s ended %s %q, want %s %q", o.GetOrderId(), o.GetStatus(), o.GetFailureReason(), st, reason)
	}
}

// The saga's outcomes, each on its own customer and products, on one shop;
// then every invariant across all six databases.
func TestSaga(t *testing.T) {
	// Outcome counts must not depend on how loaded the machine is: a step
	// deadline is tested on its own (TestTimeoutAndLateReply). Watch
	// streams never recheck here, so every change they report was
	// announced to them.
	s := startShop(t, "SWITCHYARD_SAGA_STEP_TIMEOUT=5m", "SWITCHYARD_WATCH_RECHECK=1h")

	t.Run("group", func(t *testing.T) {
		t.Run("happy path", func(t *testing.T) {
			t.Parallel()
			cust, sku := s.customer(10_000), s.product(1_250, 10)
			// WatchNotifications: the existing WELCOME first, then live ones.
			wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			watch, err := s.notifications.WatchNotifications(wctx, &notificationsv1.WatchNotificationsRequest{CustomerId: cust})
			if err != nil {
				t.Fatal(err)
			}
			if n, err := watch.Recv(); err != nil || n.GetNotification().GetKind() != "WELCOME" {
				t.Fatalf("WatchNotifications first sent %v (%v), want the WELCOME", n, err)
			}
			o := s.order(cust, "", item(sku, 2))
			if o.GetStatus() != pending {
				t.Fatalf("CreateOrder returned %s, want PENDING", o.GetStatus())
			}
			// The stream starts with the current state (PENDING, or already
			// CONFIRMED if the saga was quicker than the watch) and ends final.
			states := s.watch(o.GetOrderId())
			for _, st := range states[:len(states)-1] {
				if st.GetStatus() != pending {
					t.Fatalf("WatchOrder sent %s before its last message", st.GetStatus())
				}
			}
			final := states[len(states)-1]
			wantFinal(t, final, confirmed, "")
			if final.GetTotal().GetAmountMinor() != 2_500 || final.GetItems()[0].GetUnitPrice().GetAmountMinor() != 1_250 {
				t.Fatalf("confirmed order total %v, items %v; want 2500 at 1250 each", final.GetTotal(), final.GetItems())
			}
			s.wantBalance(cust, 7_500, "a 2500 order on 10000")
			if kinds := s.waitNotifications(cust, 2); !slices.Equal(kinds, []string{"WELCOME", "ORDER_CONFIRMED"}) {
				t.Fatalf("notifications %v, want WELCOME then ORDER_CONFIRMED", kinds)
			}
			if n, err := watch.Recv(); err != nil || n.GetNotification().GetKind() != "ORDER_CONFIRMED" || !strings.Contains(n.GetNotification().GetSubject(), o.GetOrderId()) {
				t.Fatalf("WatchNotifications then sent %v (%v), want this order's ORDER_CONFIRMED", n, err)
			}
		})

		t.Run("out of stock", func(t *testing.T) {
			t.Parallel()
			cust, sku := s.customer(100_000), s.product(100, 3)
			wantFinal(t, s.final(s.order(cust, "", item(sku, 4)).GetOrderId()), cancelled, "OUT_OF_STOCK")
			s.waitStock(sku, 3, 0)
		})

		t.Run("unknown sku", func(t *testing.T) {
			t.Parallel()
			cust, sku := s.customer(100_000), s.product(100, 3)
			wantFinal(t, s.final(s.order(cust, "", item(sku, 1), item("NO-SUCH-SKU", 1)).GetOrderId()), cancelled, "UNKNOWN_SKU")
			s.waitStock(sku, 3, 0)
		})

		t.Run("insufficient funds releases stock", func(t *testing.T) {
			t.Parallel()
			cust, sku := s.customer(999), s.product(500, 5)
			wantFinal(t, s.final(s.order(cust, "", item(sku, 2)).GetOrderId()), cancelled, "INSUFFICIENT_FUNDS")
			s.waitStock(sku, 5, 0)
			if b := s.balance(cust); b != 999 {
				t.Fatalf("balance %d after a declined order, want 999", b)
			}
			if kinds := s.waitNotifications(cust, 2); !slices.Equal(kinds, []string{"WELCOME", "ORDER_CANCELLED"}) {
				t.Fatalf("notifications %v, want WELCOME then ORDER_CANCELLED", kinds)
			}
		})

		t.Run("account not found", func(t *testing.T) {
			t.Parallel()
			sku := s.product(100, 5)
			stranger := "00000000-0000-4000-8000-000000000001"
			wantFinal(t, s.final(s.order(stranger, "", item(sku, 1)).GetOrderId()), cancelled, "ACCOUNT_NOT_FOUND")
			s.waitStock(sku, 5, 0)
		})

		t.Run("cancel after confirmation refunds and restocks", func(t *testing.T) {
			t.Parallel()
			cust, sku := s.customer(5_000), s.product(1_000, 4)
			o := s.final(s.order(cust, "", item(sku, 3)).GetOrderId())
			wantFinal(t, o, confirmed, "")
			resp := retry(t, func() (*ordersv1.CancelOrderResponse, error) {
				return s.orders.CancelOrder(ctx, &ordersv1.CancelOrderRequest{OrderId: o.GetOrderId(), Reason: "changed my mind"})
			})
			wantFinal(t, resp.GetOrder(), cancelled, "CANCELLED_BY_CUSTOMER")
			if err := s.check.WaitQuiet(ctx, 60e9); err != nil {
				t.Fatal(err)
			}
			s.wantBalance(cust, 5_000, "cancelling a confirmed order gives the 5000 back")
			s.waitStock(sku, 4, 0)
		})

		t.Run("same idempotency key: one order, one charge", func(t *testing.T) {
			t.Parallel()
			cust, sku := s.customer(10_000), s.product(700, 10)
			a := s.order(cust, "key-"+cust, item(sku, 1))
			b := s.order(cust, "key-"+cust, item(sku, 1))
			if a.GetOrderId() != b.GetOrderId() {
				t.Fatalf("two orders %s and %s for one idempotency key", a.GetOrderId(), b.GetOrderId())
			}
			wantFinal(t, s.final(a.GetOrderId()), confirmed, "")
			if _, err := s.orders.CreateOrder(ctx, &ordersv1.CreateOrderRequest{CustomerId: cust, Items: []*ordersv1.CreateOrderItem{item(sku, 2)}, IdempotencyKey: "key-" + cust}); err == nil {
				t.Fatal("the key was accepted again for a different request")
			}
			list := retry(t, func() (*paymentsv1.ListPaymentsResponse, error) {
				return s.payments.ListPayments(ctx, &paymentsv1.ListPaymentsRequest{CustomerId: cust})
			})
			captures := 0
			for _, p := range list.GetPayments() {
				if p.GetKind() == paymentsv1.PaymentKind_PAYMENT_KIND_CAPTURE {
					captures++
				}
			}
			if captures != 1 {
				t.Fatalf("%d captures, want one", captures)
			}
			s.wantBalance(cust, 9_300, "one charge of 700 on 10000")
		})

		t.Run("pagination", func(t *testing.T) {
			t.Parallel()
			cust, sku := s.customer(100_000), s.product(100, 100)
			var placed []string
			for i := 0; i < 5; i++ {
				placed = append(placed, s.order(cust, fmt.Sprintf("page-%s-%d", cust, i), item(sku, 1)).GetOrderId())
			}
			var got []string
			pages, token := 0, ""
			for {
				resp := retry(t, func() (*ordersv1.ListOrdersResponse, error) {
					return s.orders.ListOrders(ctx, &ordersv1.ListOrdersRequest{CustomerId: cust, PageSize: 2, PageToken: token})
				})
				pages++
				for _, o := range resp.GetOrders() {
					if o.GetCustomerId() != cust || len(o.GetItems()) != 1 || o.GetItems()[0].GetSku() != sku {
						t.Fatalf("listed order %v is not this customer's one-line order", o)
					}
					got = append(got, o.GetOrderId())
				}
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			slices.Reverse(placed) // newest first
			if !slices.Equal(got, placed) || pages != 3 {
				t.Fatalf("ListOrders in pages of 2 gave %v in %d pages, want %v in 3", got, pages, placed)
			}
			var skus []string
			token = ""
			for {
				resp := retry(t, func() (*inventoryv1.ListProductsResponse, error) {
					return s.inventory.ListProducts(ctx, &inventoryv1.ListProductsRequest{PageSize: 3, PageToken: token})
				})
				for _, p := range resp.GetProducts() {
					skus = append(skus, p.GetSku())
				}
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			if !slices.IsSorted(skus) || !slices.Contains(skus, sku) || len(slices.Compact(slices.Clone(skus))) != len(skus) {
				t.Fatalf("ListProducts in pages of 3 gave %v: want every SKU once, sorted, including %s", skus, sku)
			}

			// Payments (one top-up, five captures) and notifications (a
			// welcome, five confirmations) in pages of 4: the same items as
			// one big page, in the same order, in two pages.
			testkit.WaitFor(t, time.Minute, "six notifications", func() bool {
				resp, err := s.notifications.ListNotifications(ctx, &notificationsv1.ListNotificationsRequest{CustomerId: cust, PageSize: 1000})
				return err == nil && len(resp.GetNotifications()) == 6
			})
			all := retry(t, func() (*paymentsv1.ListPaymentsResponse, error) {
				return s.payments.ListPayments(ctx, &paymentsv1.ListPaymentsRequest{CustomerId: cust, PageSize: 1000})
			})
			var want, paged []string
			for _, p := range all.GetPayments() {
				want = append(want, p.GetPaymentId())
			}
			pages, token = 0, ""
			for {
				resp := retry(t, func() (*paymentsv1.ListPaymentsResponse, error) {
					return s.payments.ListPayments(ctx, &paymentsv1.ListPaymentsRequest{CustomerId: cust, PageSize: 4, PageToken: token})
				})
				pages++
				for _, p := range resp.GetPayments() {
					paged = append(paged, p.GetPaymentId())
				}
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			if len(want) != 6 || !slices.Equal(paged, want) || pages != 2 {
				t.Fatalf("ListPayments in pages of 4 gave %v in %d pages, want %v (6) in 2", paged, pages, want)
			}
			allN := retry(t, func() (*notificationsv1.ListNotificationsResponse, error) {
				return s.notifications.ListNotifications(ctx, &notificationsv1.ListNotificationsRequest{CustomerId: cust, PageSize: 1000})
			})
			want, paged = nil, nil
			for _, n := range allN.GetNotifications() {
				want = append(want, n.GetNotificationId())
			}
			pages, token = 0, ""
			for {
				resp := retry(t, func() (*notificationsv1.ListNotificationsResponse, error) {
					return s.notifications.ListNotifications(ctx, &notificationsv1.ListNotificationsRequest{CustomerId: cust, PageSize: 4, PageToken: token})
				})
				pages++
				for _, n := range resp.GetNotifications() {
					paged = append(paged, n.GetNotificationId())
				}
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			if !slices.Equal(paged, want) || pages != 2 {
				t.Fatalf("ListNotifications in pages of 4 gave %v in %d pages, want %v in 2", paged, pages, want)
			}
		})

		t.Run("one key, two customers: two orders and two top-ups", func(t *testing.T) {
			t.Parallel()
			a, b, sku := s.customer(1_000), s.customer(1_000), s.product(100, 10)
			key := "shared-key-" + sku
			oa := s.order(a, key, item(sku, 1))
			ob := s.order(b, key, item(sku, 1))
			if oa.GetOrderId() == ob.GetOrderId() || ob.GetCustomerId() != b {
				t.Fatalf("customer B's order with A's key is %v, want B's own order", ob)
			}
			for _, cust := range []string{a, b} {
				retry(t, func() (*paymentsv1.TopUpResponse, error) {
					return s.payments.TopUp(ctx, &paymentsv1.TopUpRequest{CustomerId: cust, Amount: usd(500), IdempotencyKey: key})
				})
			}
			wantFinal(t, s.final(oa.GetOrderId()), confirmed, "")
			wantFinal(t, s.final(ob.GetOrderId()), confirmed, "")
			s.wantBalance(a, 1_400, "1000 + 500 - 100")
			s.wantBalance(b, 1_400, "1000 + 500 - 100")
		})

		t.Run("same key on TopUp and AdjustStock changes once", func(t *testing.T) {
			t.Parallel()
			cust, sku := s.customer(0), s.product(100, 10)
			for i := 0; i < 2; i++ {
				a := retry(t, func() (*paymentsv1.TopUpResponse, error) {
					return s.payments.TopUp(ctx, &paymentsv1.TopUpRequest{CustomerId: cust, Amount: usd(700), IdempotencyKey: "top-up-" + cust})
				})
				p := retry(t, func() (*inventoryv1.AdjustStockResponse, error) {
					return s.inventory.AdjustStock(ctx, &inventoryv1.AdjustStockRequest{Sku: sku, Delta: 5, IdempotencyKey: "restock-" + sku})
				})
				if a.GetAccount().GetBalance().GetAmountMinor() != 700 || p.GetProduct().GetAvailable() != 15 {
					t.Fatalf("call %d: balance %v, available %d; want 700 and 15 every time", i+1, a.GetAccount().GetBalance(), p.GetProduct().GetAvailable())
				}
			}
			if b := s.balance(cust); b != 700 {
				t.Fatalf("balance %d after the same top-up twice, want 700", b)
			}
			s.waitStock(sku, 15, 0)
		})

		t.Run("200 orders race for 50 units", func(t *testing.T) {
			t.Parallel()
			sku := s.product(100, 50)
			custs := make([]string, 8)
			for i := range custs {
				custs[i] = s.customer(1_000_000)
			}
			results := race(t, s, 200, func(i int) (string, []*ordersv1.CreateOrderItem) {
				return custs[i%len(custs)], []*ordersv1.CreateOrderItem{item(sku, 1)}
			})
			if results[confirmed.String()] != 50 || results["OUT_OF_STOCK"] != 150 {
				t.Fatalf("outcomes %v, want exactly 50 confirmed and 150 OUT_OF_STOCK", results)
			}
			s.waitStock(sku, 0, 0)
		})

		t.Run("100 orders race for 30 orders' worth of funds", func(t *testing.T) {
			t.Parallel()
			sku := s.product(1_000, 1_000)
			custs := []string{s.customer(10_000), s.customer(10_000), s.customer(10_000)} // 10 orders each
			results := race(t, s, 100, func(i int) (string, []*ordersv1.CreateOrderItem) {
				return custs[i%3], []*ordersv1.CreateOrderItem{item(sku, 1)}
			})
			if results[confirmed.String()] != 30 || results["INSUFFICIENT_FUNDS"] != 70 {
				t.Fatalf("outcomes %v, want exactly 30 confirmed and 70 INSUFFICIENT_FUNDS", results)
			}
			for _, c := range custs {
				s.wantBalance(c, 0, "ten orders of 1000 on 10000")
			}
			s.waitStock(sku, 970, 0)
		})
	})

	s.quietAndValid()
}

// race places n orders from 20 goroutines and counts the final outcomes
// (status, or failure reason for cancellations).
func race(t *testing.T, s *shop, n int, spec func(i int) (string, []*ordersv1.CreateOrderItem)) map[string]int {
	t.Helper()
	var mu sync.Mutex
	results := map[string]int{}
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 20; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				cust, items := spec(i)
				o := s.final(s.order(cust, fmt.Sprintf("race-%s-%d", cust, i), items...).GetOrderId())
				key := o.GetStatus().String()
				if o.GetStatus() == cancelled {
					key = o.GetFailureReason()
				}
				mu.Lock()
				results[key]++
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return results
}
