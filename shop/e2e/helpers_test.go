// Package e2e drives the shop end to end: six service processes backed by
// real PostgreSQL and a Kafka-protocol broker, exercised through gRPC.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	moneyv1 "github.com/switchyard/switchyard/gen/go/switchyard/money/v1"
	notificationsv1 "github.com/switchyard/switchyard/gen/go/switchyard/notifications/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	paymentsv1 "github.com/switchyard/switchyard/gen/go/switchyard/payments/v1"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/shop/invariants"
	"github.com/switchyard/switchyard/shop/stack"
)

var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("e2e: every test runs the whole shop: skipped under -short")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "switchyard-bin-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	if err := stack.Build(ctx, "../..", binDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cancel()
	code := m.Run()
	os.RemoveAll(binDir)
	os.Exit(code)
}

// e2eTransport is what carries events in these tests:
// SWITCHYARD_E2E_TRANSPORT=redis runs the whole suite on Redis Streams
// (`make test` runs it on both).
func e2eTransport() string {
	if v := os.Getenv("SWITCHYARD_E2E_TRANSPORT"); v != "" {
		return v
	}
	return "kafka"
}

// shop is a running stack with clients for every service.
type shop struct {
	t             testing.TB
	stack         *stack.Stack
	check         *invariants.Checker
	customers     customersv1.CustomerServiceClient
	orders        ordersv1.OrderServiceClient
	inventory     inventoryv1.InventoryServiceClient
	payments      paymentsv1.PaymentServiceClient
	notifications notificationsv1.NotificationServiceClient
	logs          *syncBuffer
}

// syncBuffer collects the services' logs; they are shown if the test fails.
type syncBuffer struct{ testkit.Logs }

// tail returns the last n lines.
func (s *syncBuffer) tail(n int) string {
	lines := strings.Split(s.String(), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func startShop(t *testing.T, env ...string) *shop {
	t.Helper()
	return startShopWith(t, nil, env...)
}

// startShopWith starts the shop with instances[service] processes of a
// service (default 1).
func startShopWith(t *testing.T, instances map[string]int, env ...string) *shop {
	t.Helper()
	logs := &syncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{
		Dir: filepath.Join(t.TempDir(), "data"), BinDir: binDir, RandomPorts: true, Env: env, Log: logs,
		Transport: e2eTransport(), Instances: instances,
	})
	if err != nil {
		t.Fatalf("start the shop: %v\n%s", err, logs.tail(60))
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last service log lines:\n%s", logs.tail(120))
		}
		st.Close()
	})
	s := &shop{t: t, stack: st, logs: logs}
	conn := func(name string) *grpc.ClientConn {
		c, err := grpc.NewClient(st.Addr(name), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	s.customers = customersv1.NewCustomerServiceClient(conn("customers"))
	s.orders = ordersv1.NewOrderServiceClient(conn("orders"))
	s.inventory = inventoryv1.NewInventoryServiceClient(conn("inventory"))
	s.payments = paymentsv1.NewPaymentServiceClient(conn("payments"))
	s.notifications = notificationsv1.NewNotificationServiceClient(conn("notifications"))
	tr, err := st.OpenTransport()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	s.check, err = invariants.Open(context.Background(), st.DatabaseURL, tr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.check.Close)
	if url := st.CacheURL(); url != "" {
		if err := s.check.UseStockCache(url); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func usd(minor int64) *moneyv1.Money { return &moneyv1.Money{Currency: "USD", AmountMinor: minor} }

var ctx = context.Background()

// retry repeats a call while the service is unavailable (restarting) or
// refuses it for overload (orders' admission control), as a client should.
func retry[T any](t testing.TB, call func() (T, error)) T {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		v, err := call()
		if err == nil {
			return v
		}
		if c := status.Code(err); (c != codes.Unavailable && c != codes.ResourceExhausted) || time.Now().After(deadline) {
			t.Fatalf("call failed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// customer registers a customer, waits for the account payments opens for
// it, and tops it up by funds (if > 0).
func (s *shop) customer(funds int64) string {
	s.t.Helper()
	resp := retry(s.t, func() (*customersv1.RegisterCustomerResponse, error) {
		return s.customers.RegisterCustomer(ctx, &customersv1.RegisterCustomerRequest{Email: uuid.NewString()[:8] + "@example.com", Name: "Test Customer"})
	})
	id := resp.GetCustomer().GetCustomerId()
	s.waitAccount(id)
	if funds > 0 {
		retry(s.t, func() (*paymentsv1.TopUpResponse, error) {
			return s.payments.TopUp(ctx, &paymentsv1.TopUpRequest{CustomerId: id, Amount: usd(funds), IdempotencyKey: "initial-" + id})
		})
	}
	return id
}

func (s *shop) waitAccount(id string) {
	s.t.Helper()
	testkit.WaitFor(s.t, time.Minute, "the account of "+id, func() bool {
		_, err := s.payments.GetAccount(ctx, &paymentsv1.GetAccountRequest{CustomerId: id})
		if c := status.Code(err); err != nil && c != codes.NotFound && c != codes.Unavailable {
			s.t.Fatalf("account of %s: %v", id, err)
		}
		return err == nil
	})
}

func (s *shop) balance(id string) int64 {
	s.t.Helper()
	a := retry(s.t, func() (*paymentsv1.GetAccountResponse, error) {
		return s.payments.GetAccount(ctx, &paymentsv1.GetAccountRequest{CustomerId: id})
	})
	return a.GetAccount().GetBalance().GetAmountMinor()
}

// wantBalance fails the test unless a customer's balance is want. It
// reads once: an order's terminal state came from events whose writers'
// transactions the relay published only once they were visible, so the
// payment behind it shows already.
func (s *shop) wantBalance(id string, want int64, why string) {
	s.t.Helper()
	if got := s.balance(id); got != want {
		s.t.Fatalf("balance of %s is %d, want %d (%s)", id, got, want, why)
	}
}

// product creates a product with a unique SKU and returns the SKU.
func (s *shop) product(price, stock int64) string {
	s.t.Helper()
	sku := "SKU-" + strings.ToUpper(uuid.NewString()[:8])
	retry(s.t, func() (*inventoryv1.CreateProductResponse, error) {
		return s.inventory.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: sku, Name: "Thing " + sku, Price: usd(price), Stock: stock})
	})
	return sku
}

func (s *shop) stock(sku string) (available, reserved int64) {
	s.t.Helper()
	p := retry(s.t, func() (*inventoryv1.GetProductResponse, error) {
		return s.inventory.GetProduct(ctx, &inventoryv1.GetProductRequest{Sku: sku})
	})
	return p.GetProduct().GetAvailable(), p.GetProduct().GetReserved()
}

func (s *shop) order(customer, key string, items ...*ordersv1.CreateOrderItem) *ordersv1.Order {
	s.t.Helper()
	resp := retry(s.t, func() (*ordersv1.CreateOrderResponse, error) {
		return s.orders.CreateOrder(ctx, &ordersv1.CreateOrderRequest{CustomerId: customer, Items: items, IdempotencyKey: key})
	})
	return resp.GetOrder()
}

func item(sku string, q int64) *ordersv1.CreateOrderItem {
	return &ordersv1.CreateOrderItem{Sku: sku, Quantity: q}
}

// watch streams an order until it is terminal and returns every state seen.
func (s *shop) watch(id string) []*ordersv1.Order {
	s.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		states, err := s.watchOnce(id)
		if err == nil {
			return states
		}
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			s.t.Fatalf("watch order %s: %v", id, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (s *shop) watchOnce(id string) ([]*ordersv1.Order, error) {
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	stream, err := s.orders.WatchOrder(wctx, &ordersv1.WatchOrderRequest{OrderId: id})
	if err != nil {
		return nil, err
	}
	var states []*ordersv1.Order
	for {
		resp, err := stream.Recv()
		if err != nil {
			if len(states) > 0 && states[len(states)-1].GetStatus() != ordersv1.OrderStatus_ORDER_STATUS_PENDING {
				return states, nil
			}
			return nil, err
		}
		states = append(states, resp.GetOrder())
	}
}

func (s *shop) final(id string) *ordersv1.Order {
	s.t.Helper()
	states := s.watch(id)
	return states[len(states)-1]
}

// quietAndValid waits for a quiet point and checks every invariant.
func (s *shop) quietAndValid() {
	s.t.Helper()
	if err := s.check.WaitQuiet(ctx, 2*time.Minute); err != nil {
		s.t.Fatal(err)
	}
	if err := s.check.Check(ctx); err != nil {
		s.t.Fatal(err)
	}
}

func (s *shop) notificationKinds(customer string) []string {
	s.t.Helper()
	resp := retry(s.t, func() (*notificationsv1.ListNotificationsResponse, error) {
		return s.notifications.ListNotifications(ctx, &notificationsv1.ListNotificationsRequest{CustomerId: customer})
	})
	var kinds []string
	for _, n := range resp.GetNotifications() {
		kinds = append(kinds, n.GetKind())
	}
	return kinds
}

func (s *shop) waitNotifications(customer string, want int) []string {
	s.t.Helper()
	var kinds []string
	testkit.WaitFor(s.t, time.Minute, fmt.Sprintf("%d notifications for %s", want, customer), func() bool {
		kinds = s.notificationKinds(customer)
		return len(kinds) >= want
	})
	return kinds
}

// waitStock waits until a product's counters settle at the wanted values:
// commits and releases reach inventory after the order turns terminal.
func (s *shop) waitStock(sku string, available, reserved int64) {
	s.t.Helper()
	testkit.WaitFor(s.t, time.Minute, fmt.Sprintf("stock of %s to settle at available %d, reserved %d", sku, available, reserved), func() bool {
		a, r := s.stock(sku)
		return a == available && r == reserved
	})
}
