package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/shop/stack"
)

// BenchmarkStockCache measures, in one run, GetProduct with and without
// the stock cache: read throughput and latency on 20 SKUs, then a
// realistic mix (readers plus a steady order load) giving the hit ratio and
// the staleness of the cache (a stock change's commit to the cache holding
// it, from switchyard_cache_update_age_seconds), and the floor: the same
// readers calling a gRPC method that does nothing. Run it with
//
//	go test -run '^$' -bench StockCache -benchtime 1x ./shop/e2e/
func BenchmarkStockCache(b *testing.B) {
	for _, mode := range []struct {
		name    string
		noCache bool
	}{{"cached", false}, {"database", true}} {
		b.Run(mode.name, func(b *testing.B) {
			for range b.N {
				benchStock(b, mode.noCache)
			}
		})
	}
}

func benchStock(b *testing.B, noCache bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{Dir: filepath.Join(b.TempDir(), "data"), BinDir: binDir, RandomPorts: true,
		Transport: e2eTransport(), NoCache: noCache})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	inv := inventoryv1.NewInventoryServiceClient(benchDial(b, st, "inventory"))
	orders := ordersv1.NewOrderServiceClient(benchDial(b, st, "orders"))

	skus := make([]string, 20)
	for i := range skus {
		skus[i] = fmt.Sprintf("BENCH-%02d", i)
		if _, err := inv.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: skus[i], Name: "Bench " + skus[i], Price: usd(100), Stock: 1_000_000}); err != nil {
			b.Fatal(err)
		}
	}
	var buyers []string
	for i := range 4 {
		buyers = append(buyers, benchBuyer(ctx, b, st, fmt.Sprintf("bench%d@example.com", i)))
	}

	// Reads alone, with the CPU they cost: the load generator's own (this
	// process: gRPC client) and everything else's (the services, Redis,
	// PostgreSQL), since both share the machine's cores.
	self0, all0 := testkit.CPU(b)
	lat := readLoad(ctx, getProducts(inv, skus), 16, 5*time.Second, nil)
	self1, all1 := testkit.CPU(b)
	b.ReportMetric(float64(len(lat))/5, "reads/s")
	b.ReportMetric(float64((self1-self0).Microseconds())/float64(max(1, len(lat))), "client-cpu-us/read")
	b.ReportMetric(float64((all1-all0-(self1-self0)).Microseconds())/float64(max(1, len(lat))), "server-cpu-us/read")
	b.ReportMetric(ms(lat, 0.50), "p50-ms")
	b.ReportMetric(ms(lat, 0.99), "p99-ms")

	// The floor: the same readers calling inventory's gRPC health check,
	// which does no work of its own and passes the same server and client
	// (it skips the access log line and request metrics every other RPC
	// has). No read through this server can be faster, so it bounds what
	// any cache can gain over the database here.
	health := healthpb.NewHealthClient(benchDial(b, st, "inventory"))
	self0, all0 = testkit.CPU(b)
	lat = readLoad(ctx, func(ctx context.Context, _ int) error {
		_, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}, 16, 5*time.Second, nil)
	self1, all1 = testkit.CPU(b)
	b.ReportMetric(float64(len(lat))/5, "floor-calls/s")
	b.ReportMetric(float64((self1-self0).Microseconds())/float64(max(1, len(lat))), "floor-client-cpu-us/call")
	b.ReportMetric(float64((all1-all0-(self1-self0)).Microseconds())/float64(max(1, len(lat))), "floor-server-cpu-us/call")

	// The mix: 8 readers and 4 order writers (reads >> writes).
	before := scrape(b, st.MetricsURL("inventory"))
	deadlocks := func() float64 {
		var n float64
		if err := pgxQueryRow(ctx, st.DatabaseURL("inventory"), `SELECT sum(deadlocks)::float8 FROM pg_stat_database`, &n); err != nil {
			b.Fatal(err)
		}
		return n
	}
	deadlocksBefore := deadlocks()
	var placed int
	var mu sync.Mutex
	mix := readLoad(ctx, getProducts(inv, skus), 8, 10*time.Second, func(stop <-chan struct{}) {
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(w), 1))
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					_, err := orders.CreateOrder(ctx, &ordersv1.CreateOrderRequest{CustomerId: buyers[w],
						Items: []*ordersv1.CreateOrderItem{item(skus[rng.IntN(len(skus))], 1)}, IdempotencyKey: fmt.Sprintf("bench-%d-%d", w, i)})
					if err == nil {
						mu.Lock()
						placed++
						mu.Unlock()
					}
				}
			}()
		}
		<-stop
		wg.Wait()
	})
	time.Sleep(2 * time.Second) // let the last changes reach the cache before reading the histogram
	after := scrape(b, st.MetricsURL("inventory"))
	b.ReportMetric(float64(len(mix))/10, "mix-reads/s")
	b.ReportMetric(float64(placed)/10, "mix-orders/s")
	b.ReportMetric(deadlocks()-deadlocksBefore, "mix-deadlocks")
	b.ReportMetric(after[`switchyard_consumer_retries_total{group="inventory"}`]-before[`switchyard_consumer_retries_total{group="inventory"}`], "mix-saga-retries")
	if noCache {
		return
	}
	delta := func(k string) float64 { return after[k] - before[k] }
	hits, misses, errs := delta(`switchyard_cache_requests_total{result="hit"}`), delta(`switchyard_cache_requests_total{result="miss"}`), delta(`switchyard_cache_requests_total{result="error"}`)
	b.ReportMetric(100*hits/max(1, hits+misses+errs), "hit-%")
	b.ReportMetric(100*misses/max(1, hits+misses+errs), "miss-%")
	b.ReportMetric(100*errs/max(1, hits+misses+errs), "error-%")
	buckets := histogram(before, after, "switchyard_cache_update_age_seconds")
	b.ReportMetric(1000*quantile(buckets, 0.50), "stale-p50-ms")
	b.ReportMetric(1000*quantile(buckets, 0.99), "stale-p99-ms")
}

// getProducts returns a read of GetProduct for readLoad: the i-th call
// reads the i-th of skus, round and round.
func getProducts(inv inventoryv1.InventoryServiceClient, skus []string) func(ctx context.Context, i int) error {
	return func(ctx context.Context, i int) error {
		_, err := inv.GetProduct(ctx, &inventoryv1.GetProductRequest{Sku: skus[i%len(skus)]})
		return err
	}
}

// readLoad runs readers loops of read for d (with during, if set, running
// alongside until the end) and returns every successful call's latency.
func readLoad(ctx context.Context, read func(ctx context.Context, i int) error, readers int, d time.Duration, during func(stop <-chan struct{})) []time.Duration {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var all []time.Duration
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for i := r; ; i++ {
				select {
				case <-stop:
					mu.Lock()
					all = append(all, mine...)
					mu.Unlock()
					return
				default:
				}
				start := time.Now()
				if err := read(ctx, i); err == nil {
					mine = append(mine, time.Since(start))
				}
			}
		}()
	}
	if during != nil {
		wg.Add(1)
		go func() { defer wg.Done(); during(stop) }()
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	return all
}

func ms(lat []time.Duration, q float64) float64 {
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000
}

type bucket struct{ le, count float64 }

// histogram returns the cumulative buckets of a Prometheus histogram
// between two scrapes.
func histogram(before, after map[string]float64, name string) []bucket {
	var out []bucket
	for k, v := range after {
		if !strings.HasPrefix(k, name+`_bucket{le="`) {
			continue
		}
		le, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(k, name+`_bucket{le="`), `"}`), 64)
		if err != nil {
			continue // +Inf
		}
		out = append(out, bucket{le, v - before[k]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].le < out[j].le })
	return out
}

// quantile interpolates q within the cumulative buckets.
func quantile(bs []bucket, q float64) float64 {
	if len(bs) == 0 || bs[len(bs)-1].count == 0 {
		return 0
	}
	rank := q * bs[len(bs)-1].count
	lo, below := 0.0, 0.0
	for _, b := range bs {
		if b.count >= rank {
			if b.count == below {
				return b.le
			}
			return lo + (b.le-lo)*(rank-below)/(b.count-below)
		}
		lo, below = b.le, b.count
	}
	return bs[len(bs)-1].le
}

// pgxQueryRow runs one query on a connection of its own.
func pgxQueryRow(ctx context.Context, url, sql string, dest ...any) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, sql).Scan(dest...)
}
