package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
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
	var stopped []string
	if stopAnalytics {
		st.Stop("analytics")
		stopped = append(stopped, "analytics")
	}
	inv := inventoryv1.NewInventoryServiceClient(benchDial(b, st, "inventory"))
	ord := ordersv1.NewOrderServiceClient(benchDial(b, st, "orders"))
	if _, err := inv.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: "LAT-1", Name: "Latency", Price: usd(100), Stock: 1_000_000}); err != nil {
		b.Fatal(err)
	}
	buyer := benchBuyer(ctx, b, st, "latency@example.com")
	before := useSoFar(ctx, b, st, stopped...)

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
	after := useSoFar(ctx, b, st, stopped...)

	tr, err := st.OpenTransport()
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	svc, _ := registry.Lookup("analytics")
	backlog, err := transport.Backlog(ctx, tr, "analytics", svc.Consumes...)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(ms(lat, 0.50), "p50-ms")
	b.ReportMetric(ms(lat, 0.99), "p99-ms")
	b.ReportMetric(float64(confirmed), "confirmed")
	b.ReportMetric(float64(backlog), "analytics-backlog")
	reportCost(b, before, after, orders)
}

// usage is what the shop has used so far.
type usage struct {
	// roundTrips and xacts are, for the saga's services, the round trips
	// their pools made (switchyard_db_round_trips_total) and the
	// transactions their databases committed (pg_stat_database, which also
	// counts the relay's and the benchmark's own connections).
	roundTrips, xacts map[string]float64
	// cpu is each service's CPU time (process_cpu_seconds_total).
	cpu map[string]float64
	// self and all are this process's CPU (the gRPC clients and the
	// in-process broker) and the whole machine's.
	self, all time.Duration
}

var sagaServices = []string{"orders", "inventory", "payments"}

// useSoFar reads what the shop has used so far; stopped services are
// skipped.
func useSoFar(ctx context.Context, b *testing.B, st *stack.Stack, stopped ...string) usage {
	b.Helper()
	u := usage{roundTrips: map[string]float64{}, xacts: map[string]float64{}, cpu: map[string]float64{}}
	for _, svc := range registry.Services {
		if slices.Contains(stopped, svc.Name) {
			continue
		}
		m := scrape(b, st.MetricsURL(svc.Name))
		u.cpu[svc.Name], _ = sum(m, "process_cpu_seconds_total")
		if !slices.Contains(sagaServices, svc.Name) {
			continue
		}
		u.roundTrips[svc.Name], _ = sum(m, "switchyard_db_round_trips_total")
		var xacts int64
		// Sessions report their commits to pg_stat_database about once a
		// second: over the 15 s of orders, the last second's lag is noise.
		if err := pgxQueryRow(ctx, st.DatabaseURL(svc.Name), `SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()`, &xacts); err != nil {
			b.Fatal(err)
		}
		u.xacts[svc.Name] = float64(xacts)
	}
	u.self, u.all = testkit.CPU(b)
	return u
}

// reportCost reports what each of n orders cost between before and after:
// round trips and transactions of the saga's services, and CPU
// milliseconds of each service, of this process (clients and broker), and
// of the rest of the machine (PostgreSQL, Redis). Background work during
// the run (relays, probes, the WatchOrder streams) is included.
func reportCost(b *testing.B, before, after usage, n float64) {
	var trips, xacts float64
	for _, svc := range sagaServices {
		d := after.roundTrips[svc] - before.roundTrips[svc]
		trips += d
		xacts += after.xacts[svc] - before.xacts[svc]
		b.ReportMetric(d/n, svc+"-round-trips/order")
	}
	b.ReportMetric(trips/n, "saga-round-trips/order")
	b.ReportMetric(xacts/n, "saga-xacts/order")
	var services float64
	for svc := range after.cpu {
		d := (after.cpu[svc] - before.cpu[svc]) * 1000
		services += d
		b.ReportMetric(d/n, svc+"-cpu-ms/order")
	}
	self := float64(after.self-before.self) / float64(time.Millisecond)
	all := float64(after.all-before.all) / float64(time.Millisecond)
	b.ReportMetric(services/n, "services-cpu-ms/order")
	b.ReportMetric(self/n, "clients+broker-cpu-ms/order")
	b.ReportMetric((all-services-self)/n, "postgres+other-cpu-ms/order")
	b.ReportMetric(all/n, "machine-cpu-ms/order")
}
