package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	analyticsv1 "github.com/switchyard/switchyard/gen/go/switchyard/analytics/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/shop/stack"
)

// Three analytics instances share the group; one is killed (SIGKILL) and
// another added while orders flow. Every event is applied exactly once
// across them, every confirmed order is scored once, and the projections
// say exactly what the orders database says (the invariant checker
// compares them row by row). Then analytics is stopped altogether: orders
// still confirm, and once it is back its lag falls to zero.
func TestAnalyticsScalesOut(t *testing.T) {
	t.Parallel()
	s := startShopWith(t, map[string]int{"analytics": 3}, "SWITCHYARD_ANALYTICS_WORK=5ms")
	rich, poor := s.customer(10_000_000), s.customer(0)
	sku := s.product(100, 100_000)
	var ids []string
	place := func(n int, from int) {
		for i := from; i < from+n; i++ {
			cust := rich
			if i%7 == 6 {
				cust = poor // declined: INSUFFICIENT_FUNDS
			}
			ids = append(ids, s.order(cust, fmt.Sprintf("scale-%d", i), item(sku, int64(1+i%3))).GetOrderId())
		}
	}
	// The instance killed is one at work: it owns partitions (the group
	// has formed) and the first orders' events are flowing.
	s.ownsPartitions(stack.Instance("analytics", 2), "analytics")
	place(30, 0)
	s.stack.Kill(stack.Instance("analytics", 2))
	place(30, 30)
	if err := s.stack.StartService(stack.Instance("analytics", 4)); err != nil {
		t.Fatal(err)
	}
	if err := s.stack.WaitServing(ctx, stack.Instance("analytics", 4)); err != nil {
		t.Fatal(err)
	}
	// It joins, most likely while the killed member's session is still
	// running out, and takes partitions over.
	s.ownsPartitions(stack.Instance("analytics", 4), "analytics")
	place(30, 60)
	s.quietAndValid() // includes analytics: projections = orders database, one score per confirmed order
	s.exactlyOnce(len(ids))
	s.lagExported(map[string][]string{
		"orders": {"orders"}, "inventory": {"inventory"}, "payments": {"payments"}, "notifications": {"notifications"},
		"analytics": {stack.Instance("analytics", 1), stack.Instance("analytics", 3), stack.Instance("analytics", 4)},
	})

	// The report, read through an instance that joined late, agrees too.
	conn, err := grpc.NewClient(s.stack.Addr(stack.Instance("analytics", 4)), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	report, err := analyticsv1.NewAnalyticsServiceClient(conn).GetSalesReport(ctx, &analyticsv1.GetSalesReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	confirmed := 0
	for _, id := range ids {
		if s.final(id).GetStatus() == ordersv1.OrderStatus_ORDER_STATUS_CONFIRMED {
			confirmed++
		}
	}
	if got := report.GetReport().GetOrdersConfirmed(); got != int64(confirmed) {
		t.Errorf("report: %d orders confirmed, orders database: %d", got, confirmed)
	}

	// Analytics stopped: the saga does not wait for it.
	for k := 1; k <= 4; k++ {
		if k != 2 {
			s.stack.Stop(stack.Instance("analytics", k))
		}
	}
	before := len(ids)
	place(20, 90)
	for _, id := range ids[before:] {
		if st := s.final(id).GetStatus(); st != ordersv1.OrderStatus_ORDER_STATUS_CONFIRMED && st != ordersv1.OrderStatus_ORDER_STATUS_CANCELLED {
			t.Fatalf("order %s is %s with analytics stopped", id, st)
		}
	}
	tr, err := s.stack.OpenTransport()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	backlog, err := transport.Backlog(ctx, tr, "analytics", "switchyard.customer", "switchyard.order")
	if err != nil {
		t.Fatal(err)
	}
	if backlog == 0 {
		t.Fatal("analytics' group has no backlog while stopped; want the new orders' events waiting")
	}
	if err := s.stack.StartService("analytics"); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 3*time.Minute, "analytics' lag to fall to zero", func() bool {
		n, err := transport.Backlog(ctx, tr, "analytics", "switchyard.customer", "switchyard.order")
		return err == nil && n == 0
	})
	s.quietAndValid()
	s.exactlyOnce(len(ids))
}

// ownsPartitions waits until an instance's member of group has partitions
// assigned (switchyard_consumer_partitions).
func (s *shop) ownsPartitions(instance, group string) {
	s.t.Helper()
	testkit.WaitFor(s.t, time.Minute, instance+" to own partitions of group "+group, func() bool {
		return scrape(s.t, s.stack.MetricsURL(instance))[`switchyard_consumer_partitions{group="`+group+`"}`] > 0
	})
}

// lagExported checks that every consumer group exports
// switchyard_consumer_lag_messages{group,topic,partition} for each
// partition of its topics, exactly once across the group's instances, and
// that once quiet none shows messages left to deliver. A partition may
// read -1 (unknown): a member knows its position in a partition only once
// it has delivered a message from it (Kafka's Position), so a partition
// that was never written to, or has had nothing new since it changed
// hands, stays unknown however long one waits; that it holds nothing
// undelivered is what the group's backlog, already 0 at a quiet point
// (WaitQuiet), says.
func (s *shop) lagExported(groups map[string][]string) {
	s.t.Helper()
	topics := map[string]int{"orders": 2, "inventory": 1, "payments": 2, "notifications": 2, "analytics": 2}
	const partitions = 6 // the broker's and Redis transport's default
	for group, instances := range groups {
		deadline := time.Now().Add(time.Minute)
		for {
			why := s.lagProblem(group, instances, partitions*topics[group])
			if why == "" {
				break
			}
			if time.Now().After(deadline) {
				s.t.Fatalf("group %s: after a minute, %s", group, why)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// lagProblem scrapes the instances of a group and says what is wrong with
// its lag series, or "" when each of the want partitions is exported by
// exactly one instance at 0 or -1.
func (s *shop) lagProblem(group string, instances []string, want int) string {
	seen := map[string]float64{}
	owners := map[string]int{}
	for _, in := range instances {
		for k, v := range scrape(s.t.(*testing.T), s.stack.MetricsURL(in)) {
			if strings.HasPrefix(k, "switchyard_consumer_lag_messages{") && strings.Contains(k, `group="`+group+`"`) {
				seen[k] = v
				owners[k]++
			}
		}
	}
	for k, v := range seen {
		if v > 0 || v < -1 {
			return fmt.Sprintf("%s = %v", k, v)
		}
		if owners[k] > 1 {
			return fmt.Sprintf("%s is exported by %d instances", k, owners[k])
		}
	}
	if len(seen) != want {
		return fmt.Sprintf("%d partitions exported, want %d", len(seen), want)
	}
	return ""
}

// exactlyOnce checks that analytics applied each consumed event once: one
// ledger row per registration and per terminal order, one inbox row each
// for its group, and one score per confirmed order.
func (s *shop) exactlyOnce(orders int) {
	s.t.Helper()
	c := context.Background()
	var customers, terminal, confirmed int
	if err := s.check.Pool("customers").QueryRow(c, `SELECT count(*) FROM customers`).Scan(&customers); err != nil {
		s.t.Fatal(err)
	}
	if err := s.check.Pool("orders").QueryRow(c, `SELECT count(*) FILTER (WHERE status <> 'PENDING'), count(*) FILTER (WHERE status = 'CONFIRMED') FROM orders`).
		Scan(&terminal, &confirmed); err != nil {
		s.t.Fatal(err)
	}
	if terminal != orders {
		s.t.Fatalf("%d terminal orders, want %d", terminal, orders)
	}
	var applied, inbox, scores int
	a := s.check.Pool("analytics")
	if err := a.QueryRow(c, `SELECT (SELECT count(*) FROM live.applied), (SELECT count(*) FROM inbox WHERE consumer_group = 'analytics'
		AND event_type IN ('switchyard.customers.v1.CustomerRegistered', 'switchyard.orders.v1.OrderConfirmed', 'switchyard.orders.v1.OrderCancelled')),
		(SELECT count(*) FROM order_scores)`).Scan(&applied, &inbox, &scores); err != nil {
		s.t.Fatal(err)
	}
	want := customers + terminal
	var problems []string
	if applied != want {
		problems = append(problems, fmt.Sprintf("%d events applied to the projections", applied))
	}
	if inbox != want {
		problems = append(problems, fmt.Sprintf("%d in the group's inbox", inbox))
	}
	if scores != confirmed {
		problems = append(problems, fmt.Sprintf("%d scores for %d confirmed orders", scores, confirmed))
	}
	if len(problems) > 0 {
		s.t.Fatalf("want %d events (%d registrations, %d terminal orders) each applied once: %s", want, customers, terminal, strings.Join(problems, "; "))
	}
}
