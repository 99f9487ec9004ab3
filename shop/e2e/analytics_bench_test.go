package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	"github.com/switchyard/switchyard/shop/registry"
	"github.com/switchyard/switchyard/shop/stack"
)

// BenchmarkOrderLatencyAnalytics measures CreateOrder to a terminal state
// (WatchOrder) for orders offered at a steady 20 per second, with analytics
// running as shipped, stopped, and far behind (each order a 500 ms wait on
// 6 partitions: at most 12 scored per second of the 20 offered, so its
// backlog grows all along). The saga never waits for analytics, so the
// three should agree; the analytics-backlog metric shows how far behind it
// was when the last order ended. Run it with
//
//	go test -run '^$' -bench OrderLatencyAnalytics -benchtime 1x ./shop/e2e/
func BenchmarkOrderLatencyAnalytics(b *testing.B) {
	for _, mode := range []struct {
		name string
		env  []string
		stop bool
	}{
		{"running", nil, false},
		{"stopped", nil, true},
		{"behind", []string{"SWITCHYARD_ANALYTICS_WORK=500ms", "SWITCHYARD_ANALYTICS_WORK_KIND=wait"}, false},
	} {
		b.Run(mode.name, func(b *testing.B) {
			for range b.N {
				benchOrderLatency(b, mode.env, mode.stop)
			}
		})
	}
}

func benchOrderLatency(b *testing.B, env []string, stopAnalytics bool) {
	const (
		rate   = 20
		orders = 300
	)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{Dir: filepath.Join(b.TempDir(), "data"), BinDir: binDir, RandomPorts: true,
		Transport: e2eTransport(), Env: env})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if stopAnalytics {
		st.Stop("analytics")
	}
	inv := inventoryv1.NewInventoryServiceClient(benchDial(b, st, "inventory"))
	ord := ordersv1.NewOrderServiceClient(benchDial(b, st, "orders"))
	if _, err := inv.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: "LAT-1", Name: "Latency", Price: usd(100), Stock: 1_000_000}); err != nil {
		b.Fatal(err)
	}
	buyer := benchBuyer(ctx, b, st, "latency@example.com")
	dbBefore := dbCost(ctx, b, st)

	// Each order in its own goroutine, started on the tick, so a slow one
	// never delays the next (an open-loop load).
	var (
		mu        sync.Mutex
		lat       []time.Duration
		confirmed int
		wg        sync.WaitGroup
	)
	tick := time.NewTicker(time.Second / rate)
	defer tick.Stop()
	for i := range orders {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			resp, err := ord.CreateOrder(ctx, &ordersv1.CreateOrderRequest{CustomerId: buyer,
				Items: []*ordersv1.CreateOrderItem{item("LAT-1", 1)}, IdempotencyKey: fmt.Sprintf("latency-%d", i)})
			if err != nil {
				b.Errorf("CreateOrder: %v", err)
				return
			}
			stream, err := ord.WatchOrder(ctx, &ordersv1.WatchOrderRequest{OrderId: resp.GetOrder().GetOrderId()})
			if err != nil {
				b.Errorf("WatchOrder: %v", err)
				return
			}
			for {
				m, err := stream.Recv()
				if err != nil {
					b.Errorf("WatchOrder: %v", err)
					return
				}
				if s := m.GetOrder().GetStatus(); s != ordersv1.OrderStatus_ORDER_STATUS_PENDING {
					mu.Lock()
					lat = append(lat, time.Since(start))
					if s == ordersv1.OrderStatus_ORDER_STATUS_CONFIRMED {
						confirmed++
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	dbAfter := dbCost(ctx, b, st)

	tr, err := st.OpenTransport()
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	svc, _ := registry.Lookup("analytics")
	backlog, err := tr.Backlog(ctx, "analytics", svc.Consumes...)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(ms(lat, 0.50), "p50-ms")
	b.ReportMetric(ms(lat, 0.99), "p99-ms")
	b.ReportMetric(float64(confirmed), "confirmed")
	b.ReportMetric(float64(backlog), "analytics-backlog")
	// What an order costs the databases: round trips of the saga's
	// services (orders, inventory, payments) and transactions committed in
	// their databases, per order. Background work (relay, sweeps, probes)
	// during the run is included.
	for _, svc := range []string{"orders", "inventory", "payments"} {
		b.ReportMetric((dbAfter[svc].roundTrips-dbBefore[svc].roundTrips)/orders, svc+"-round-trips/order")
	}
	var trips, xacts float64
	for svc := range dbAfter {
		trips += dbAfter[svc].roundTrips - dbBefore[svc].roundTrips
		xacts += dbAfter[svc].xacts - dbBefore[svc].xacts
	}
	b.ReportMetric(trips/orders, "saga-round-trips/order")
	b.ReportMetric(xacts/orders, "saga-xacts/order")
}

// dbUse is a service's use of its database so far.
type dbUse struct{ roundTrips, xacts float64 }

// dbCost reads, for the saga's services, the round trips their pools made
// (switchyard_db_round_trips_total) and the transactions their databases
// committed (pg_stat_database, which includes those of the relay's and
// the benchmark's own connections).
func dbCost(ctx context.Context, b *testing.B, st *stack.Stack) map[string]dbUse {
	b.Helper()
	out := map[string]dbUse{}
	for _, svc := range []string{"orders", "inventory", "payments"} {
		var u dbUse
		u.roundTrips, _ = sum(scrape(b, st.MetricsURL(svc)), "switchyard_db_round_trips_total")
		var xacts int64
		// Sessions report their commits to pg_stat_database about once a
		// second: over the 15 s of orders, the last second's lag is noise.
		if err := pgxQueryRow(ctx, st.DatabaseURL(svc), `SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()`, &xacts); err != nil {
			b.Fatal(err)
		}
		u.xacts = float64(xacts)
		out[svc] = u
	}
	return out
}
