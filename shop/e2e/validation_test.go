package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	moneyv1 "github.com/switchyard/switchyard/gen/go/switchyard/money/v1"
	notificationsv1 "github.com/switchyard/switchyard/gen/go/switchyard/notifications/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	paymentsv1 "github.com/switchyard/switchyard/gen/go/switchyard/payments/v1"
	"github.com/switchyard/switchyard/shop/registry"
)

// Every bad input named in docs/design.md gets INVALID_ARGUMENT with a
// field-level google.rpc.BadRequest; unknown ids get NOT_FOUND; and none of
// it changes any database.
func TestBadInput(t *testing.T) {
	t.Parallel()
	s := startShop(t)
	cust, sku := s.customer(1_000), s.product(100, 5)
	if err := s.check.WaitQuiet(ctx, 60e9); err != nil {
		t.Fatal(err)
	}
	before := s.fingerprint()

	long := strings.Repeat("x", 300)
	items := func(n int) []*ordersv1.CreateOrderItem {
		out := make([]*ordersv1.CreateOrderItem, n)
		for i := range out {
			out[i] = item(fmt.Sprintf("SKU-%d", i), 1)
		}
		return out
	}
	unknown := "00000000-0000-4000-8000-00000000abcd"
	type call func() error
	bad := []struct {
		name, field string
		call        call
	}{
		{"empty email", "email", func() error {
			_, err := s.customers.RegisterCustomer(ctx, &customersv1.RegisterCustomerRequest{Name: "A"})
			return err
		}},
		{"malformed email", "email", func() error {
			_, err := s.customers.RegisterCustomer(ctx, &customersv1.RegisterCustomerRequest{Email: "not-an-email", Name: "A"})
			return err
		}},
		{"oversized email", "email", func() error {
			_, err := s.customers.RegisterCustomer(ctx, &customersv1.RegisterCustomerRequest{Email: long + "@example.com", Name: "A"})
			return err
		}},
		{"empty name", "name", func() error {
			_, err := s.customers.RegisterCustomer(ctx, &customersv1.RegisterCustomerRequest{Email: "b@example.com"})
			return err
		}},
		{"blank name", "name", func() error {
			_, err := s.customers.RegisterCustomer(ctx, &customersv1.RegisterCustomerRequest{Email: "b@example.com", Name: "   "})
			return err
		}},
		{"oversized name", "name", func() error {
			_, err := s.customers.RegisterCustomer(ctx, &customersv1.RegisterCustomerRequest{Email: "b@example.com", Name: long})
			return err
		}},
		{"malformed customer id", "customer_id", func() error {
			_, err := s.customers.GetCustomer(ctx, &customersv1.GetCustomerRequest{CustomerId: "42"})
			return err
		}},
		{"lower-case sku", "sku", func() error {
			_, err := s.inventory.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: "book", Name: "B", Price: usd(1), Stock: 1})
			return err
		}},
		{"oversized sku", "sku", func() error {
			_, err := s.inventory.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: strings.Repeat("A", 65), Name: "B", Price: usd(1), Stock: 1})
			return err
		}},
		{"negative price", "price.amount_minor", func() error {
			_, err := s.inventory.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: "NEW-1", Name: "B", Price: usd(-1), Stock: 1})
			return err
		}},
		{"zero price", "price.amount_minor", func() error {
			_, err := s.inventory.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: "NEW-1", Name: "B", Price: usd(0), Stock: 1})
			return err
		}},
		{"price of 2^62 minor units", "price.amount_minor", func() error {
			_, err := s.inventory.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: "NEW-1", Name: "B", Price: usd(1 << 62), Stock: 4})
			return err
		}},
		{"wrong currency", "price.currency", func() error {
			_, err := s.inventory.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: "NEW-1", Name: "B", Price: &moneyv1.Money{Currency: "EUR", AmountMinor: 1}, Stock: 1})
			return err
		}},
		{"missing price", "price", func() error {
			_, err := s.inventory.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: "NEW-1", Name: "B", Stock: 1})
			return err
		}},
		{"negative stock", "stock", func() error {
			_, err := s.inventory.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: "NEW-1", Name: "B", Price: usd(1), Stock: -1})
			return err
		}},
		{"zero stock delta", "delta", func() error {
			_, err := s.inventory.AdjustStock(ctx, &inventoryv1.AdjustStockRequest{Sku: sku})
			return err
		}},
		{"oversized idempotency key", "idempotency_key", func() error {
			_, err := s.inventory.AdjustStock(ctx, &inventoryv1.AdjustStockRequest{Sku: sku, Delta: 1, IdempotencyKey: long})
			return err
		}},
		{"negative page size", "page_size", func() error {
			_, err := s.inventory.ListProducts(ctx, &inventoryv1.ListProductsRequest{PageSize: -1})
			return err
		}},
		{"forged page token", "page_token", func() error {
			_, err := s.inventory.ListProducts(ctx, &inventoryv1.ListProductsRequest{PageToken: "!!"})
			return err
		}},
		{"page token decoding to a NUL byte", "page_token", func() error {
			_, err := s.inventory.ListProducts(ctx, &inventoryv1.ListProductsRequest{PageToken: "AA"})
			return err
		}},
		{"forged orders page token", "page_token", func() error {
			_, err := s.orders.ListOrders(ctx, &ordersv1.ListOrdersRequest{CustomerId: cust, PageToken: "AA"})
			return err
		}},
		{"NUL in a name", "name", func() error {
			_, err := s.customers.RegisterCustomer(ctx, &customersv1.RegisterCustomerRequest{Email: "nul@example.com", Name: "A\x00B"})
			return err
		}},
		{"NUL in a product name", "name", func() error {
			_, err := s.inventory.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: "NUL-1", Name: "B\x00", Price: usd(1), Stock: 1})
			return err
		}},
		{"NUL in an idempotency key", "idempotency_key", func() error {
			_, err := s.payments.TopUp(ctx, &paymentsv1.TopUpRequest{CustomerId: cust, Amount: usd(5), IdempotencyKey: "k\x00"})
			return err
		}},
		{"NUL in a cancel reason", "reason", func() error {
			_, err := s.orders.CancelOrder(ctx, &ordersv1.CancelOrderRequest{OrderId: unknown, Reason: "\x00"})
			return err
		}},
		{"negative top-up", "amount.amount_minor", func() error {
			_, err := s.payments.TopUp(ctx, &paymentsv1.TopUpRequest{CustomerId: cust, Amount: usd(-5)})
			return err
		}},
		{"zero top-up", "amount.amount_minor", func() error {
			_, err := s.payments.TopUp(ctx, &paymentsv1.TopUpRequest{CustomerId: cust, Amount: usd(0)})
			return err
		}},
		{"top-up in EUR", "amount.currency", func() error {
			_, err := s.payments.TopUp(ctx, &paymentsv1.TopUpRequest{CustomerId: cust, Amount: &moneyv1.Money{Currency: "EUR", AmountMinor: 5}})
			return err
		}},
		{"malformed account id", "customer_id", func() error {
			_, err := s.payments.GetAccount(ctx, &paymentsv1.GetAccountRequest{CustomerId: "not-a-uuid"})
			return err
		}},
		{"order without items", "items", func() error {
			_, err := s.orders.CreateOrder(ctx, &ordersv1.CreateOrderRequest{CustomerId: cust})
			return err
		}},
		{"order with 101 items", "items", func() error {
			_, err := s.orders.CreateOrder(ctx, &ordersv1.CreateOrderRequest{CustomerId: cust, Items: items(101)})
			return err
		}},
		{"quantity 0", "items[0].quantity", func() error {
			_, err := s.orders.CreateOrder(ctx, &ordersv1.CreateOrderRequest{CustomerId: cust, Items: []*ordersv1.CreateOrderItem{item(sku, 0)}})
			return err
		}},
		{"quantity 1001", "items[0].quantity", func() error {
			_, err := s.orders.CreateOrder(ctx, &ordersv1.CreateOrderRequest{CustomerId: cust, Items: []*ordersv1.CreateOrderItem{item(sku, 1001)}})
			return err
		}},
		{"malformed sku in order", "items[0].sku", func() error {
			_, err := s.orders.CreateOrder(ctx, &ordersv1.CreateOrderRequest{CustomerId: cust, Items: []*ordersv1.CreateOrderItem{item("bad sku", 1)}})
			return err
		}},
		{"malformed order customer", "customer_id", func() error {
			_, err := s.orders.CreateOrder(ctx, &ordersv1.CreateOrderRequest{CustomerId: "nobody", Items: []*ordersv1.CreateOrderItem{item(sku, 1)}})
			return err
		}},
		{"malformed order id", "order_id", func() error {
			_, err := s.orders.GetOrder(ctx, &ordersv1.GetOrderRequest{OrderId: "7"})
			return err
		}},
		{"malformed cancel id", "order_id", func() error {
			_, err := s.orders.CancelOrder(ctx, &ordersv1.CancelOrderRequest{OrderId: ""})
			return err
		}},
		{"oversized cancel reason", "reason", func() error {
			_, err := s.orders.CancelOrder(ctx, &ordersv1.CancelOrderRequest{OrderId: unknown, Reason: strings.Repeat("r", 501)})
			return err
		}},
		{"oversized page", "page_size", func() error {
			_, err := s.orders.ListOrders(ctx, &ordersv1.ListOrdersRequest{CustomerId: cust, PageSize: 101})
			return err
		}},
		{"malformed watch id", "order_id", func() error {
			st, err := s.orders.WatchOrder(ctx, &ordersv1.WatchOrderRequest{OrderId: "x"})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		}},
		{"malformed notifications id", "customer_id", func() error {
			_, err := s.notifications.ListNotifications(ctx, &notificationsv1.ListNotificationsRequest{CustomerId: "x"})
			return err
		}},
	}
	for _, tc := range bad {
		err := tc.call()
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument {
			t.Errorf("%s: %v, want INVALID_ARGUMENT", tc.name, err)
			continue
		}
		var fields []string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					fields = append(fields, v.GetField())
				}
			}
		}
		if !contains(fields, tc.field) {
			t.Errorf("%s: BadRequest fields %v, want %q", tc.name, fields, tc.field)
		}
	}

	notFound := []struct {
		name string
		call call
	}{
		{"GetCustomer", func() error {
			_, err := s.customers.GetCustomer(ctx, &customersv1.GetCustomerRequest{CustomerId: unknown})
			return err
		}},
		{"GetProduct", func() error {
			_, err := s.inventory.GetProduct(ctx, &inventoryv1.GetProductRequest{Sku: "NOPE"})
			return err
		}},
		{"AdjustStock", func() error {
			_, err := s.inventory.AdjustStock(ctx, &inventoryv1.AdjustStockRequest{Sku: "NOPE", Delta: 1})
			return err
		}},
		{"GetAccount", func() error {
			_, err := s.payments.GetAccount(ctx, &paymentsv1.GetAccountRequest{CustomerId: unknown})
			return err
		}},
		{"TopUp", func() error {
			_, err := s.payments.TopUp(ctx, &paymentsv1.TopUpRequest{CustomerId: unknown, Amount: usd(5)})
			return err
		}},
		{"GetOrder", func() error {
			_, err := s.orders.GetOrder(ctx, &ordersv1.GetOrderRequest{OrderId: unknown})
			return err
		}},
		{"CancelOrder", func() error {
			_, err := s.orders.CancelOrder(ctx, &ordersv1.CancelOrderRequest{OrderId: unknown})
			return err
		}},
		{"WatchOrder", func() error {
			st, err := s.orders.WatchOrder(ctx, &ordersv1.WatchOrderRequest{OrderId: unknown})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		}},
	}
	for _, tc := range notFound {
		if err := tc.call(); status.Code(err) != codes.NotFound {
			t.Errorf("%s of an unknown id: %v, want NOT_FOUND", tc.name, err)
		}
	}
	// Overdrawing stock is refused, not clamped.
	if _, err := s.inventory.AdjustStock(ctx, &inventoryv1.AdjustStockRequest{Sku: sku, Delta: -6}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("AdjustStock below zero: %v, want FAILED_PRECONDITION", err)
	}
	// A second registration with the same email (any case).
	first := retry(t, func() (*customersv1.GetCustomerResponse, error) {
		return s.customers.GetCustomer(ctx, &customersv1.GetCustomerRequest{CustomerId: cust})
	})
	if _, err := s.customers.RegisterCustomer(ctx, &customersv1.RegisterCustomerRequest{Email: strings.ToUpper(first.GetCustomer().GetEmail()), Name: "Again"}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("second registration: %v, want ALREADY_EXISTS", err)
	}

	if err := s.check.WaitQuiet(ctx, 60e9); err != nil {
		t.Fatal(err)
	}
	if after := s.fingerprint(); after != before {
		t.Fatalf("rejected requests changed the databases:\nbefore %s\nafter  %s", before, after)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// fingerprint summarises every user table of every service database (row
// count and a hash of the rows) so that any change shows.
func (s *shop) fingerprint() string {
	s.t.Helper()
	var parts []string
	for _, svc := range registry.Names() {
		pool := s.check.Pool(svc)
		rows, err := pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`)
		if err != nil {
			s.t.Fatal(err)
		}
		var tables []string
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				s.t.Fatal(err)
			}
			tables = append(tables, n)
		}
		rows.Close()
		sort.Strings(tables)
		for _, tbl := range tables {
			var n int64
			var h string
			q := fmt.Sprintf(`SELECT count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM %q t`, tbl)
			if err := pool.QueryRow(context.Background(), q).Scan(&n, &h); err != nil {
				s.t.Fatal(err)
			}
			parts = append(parts, fmt.Sprintf("%s.%s=%d/%s", svc, tbl, n, h[:min(8, len(h))]))
		}
	}
	return strings.Join(parts, " ")
}
