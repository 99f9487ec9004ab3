// Command loadgen drives CreateOrder at a fixed rate against a running local
// stack (`make run`), follows every order to its terminal status with
// WatchOrder, and reports the achieved orders/s and the latency from
// CreateOrder to the terminal status (p50/p95/p99). It then runs pgbench on
// the same PostgreSQL cluster with one transaction shaped like CreateOrder's
// (order + item + outbox insert/delete), so the ratio to what PostgreSQL
// itself can commit is visible.
//
// With -plot it also writes the run, second by second, as an SVG picture
// (package loadplot): orders sent, refused and finished per second, the
// latency percentiles of the orders finishing in each second, and every
// consumer group's backlog (lag plus buffered messages) scraped from the
// services' /metrics.
//
//	go run ./shop/cmd/loadgen -rate 100 -duration 30s -plot run.svg
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	moneyv1 "github.com/switchyard/switchyard/gen/go/switchyard/money/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	paymentsv1 "github.com/switchyard/switchyard/gen/go/switchyard/payments/v1"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/pgcluster"
	"github.com/switchyard/switchyard/platform/telemetry"
	"github.com/switchyard/switchyard/shop/registry"
)

func main() {
	rate := flag.Int("rate", 50, "CreateOrder calls per second")
	duration := flag.Duration("duration", 20*time.Second, "how long to send orders")
	customers := flag.Int("customers", 20, "customers placing orders")
	products := flag.Int("products", 1, "products ordered, one per order in turn (1: every reservation locks the same product row, the worst case)")
	host := flag.String("host", "127.0.0.1", "host of the services (gRPC ports 50051-50054; metrics ports 51051-51056 unless -metrics)")
	pgURL := flag.String("postgres", "postgres://postgres@127.0.0.1:55432/postgres?sslmode=disable", "the stack's PostgreSQL, for pgbench ('' skips it)")
	pgbenchClients := flag.Int("pgbench-clients", 8, "pgbench client connections")
	plot := flag.String("plot", "", "write the run second by second as an SVG picture to this file")
	metrics := flag.String("metrics", "", "comma-separated host:port of the services' /metrics endpoints, read for CPU per order and, with -plot, consumer backlogs (default: the services' metrics ports 51051-51056 on -host)")
	flag.Parse()
	if *metrics == "" {
		*metrics = defaultMetrics(*host)
	}
	if err := checkFlags(*rate, *duration, *customers, *products); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	if err := run(*rate, *duration, *customers, *products, *host, *pgURL, *pgbenchClients, *plot, metricsTargets(*metrics)); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

// dial connects with otelgrpc client spans: with OTEL_EXPORTER_OTLP_ENDPOINT
// set, each order's trace starts at the load generator's CreateOrder call.
func dial(host string, port int) (*grpc.ClientConn, error) {
	return grpc.NewClient(fmt.Sprintf("%s:%d", host, port), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler()))
}

// defaultMetrics lists the documented metrics ports (registry: gRPC port +
// 1000) of the shop's services; an endpoint that does not answer (a
// service this build lacks) is skipped.
func defaultMetrics(host string) string {
	var addrs []string
	for _, svc := range registry.Services {
		addrs = append(addrs, fmt.Sprintf("%s:%d", host, svc.Port+1000))
	}
	return strings.Join(addrs, ",")
}

// maxRate is the highest -rate: one CreateOrder per microsecond, far
// beyond what one process can drive (and the send interval must not
// round to zero).
const maxRate = 1_000_000

// checkFlags refuses flags that would send no order or cannot be run,
// in one line naming the make variable as well.
func checkFlags(rate int, duration time.Duration, customers, products int) error {
	switch {
	case rate < 1 || rate > maxRate:
		return fmt.Errorf("-rate (RATE=) is CreateOrder calls per second, from 1 to %d, not %d", maxRate, rate)
	case orderCount(rate, duration) < 1:
		least := (time.Second + time.Duration(rate) - 1) / time.Duration(rate)
		return fmt.Errorf("-duration (DURATION=) %s at %d orders/s sends no order: make it at least %s", duration, rate, least)
	case products < 1 || customers < 1:
		return errors.New("-products (PRODUCTS=) and -customers must be at least 1")
	}
	return nil
}

// orderCount is how many orders rate per second sends in duration, a
// fraction of a second included (integer arithmetic: no float rounding
// loses the last order).
func orderCount(rate int, duration time.Duration) int {
	whole, frac := duration/time.Second, duration%time.Second
	return rate*int(whole) + int(int64(rate)*int64(frac)/int64(time.Second))
}

// throughput describes the rate at which n orders reached a terminal
// status within elapsed (from the first send to the last terminal
// status).
func throughput(n int, elapsed time.Duration) string {
	if n == 0 {
		return "throughput: no order reached a terminal status"
	}
	return fmt.Sprintf("throughput: %.1f orders/s reached a terminal status (%d in %s)", float64(n)/elapsed.Seconds(), n, elapsed.Round(time.Millisecond))
}

func usd(minor int64) *moneyv1.Money { return &moneyv1.Money{Currency: "USD", AmountMinor: minor} }

func run(rate int, duration time.Duration, nCustomers, nProducts int, host, pgURL string, pgbenchClients int, plot string, metrics []string) error {
	ctx := context.Background()
	shutdown, err := telemetry.SetupTracing(ctx, "loadgen", os.Getenv)
	if err != nil {
		return err
	}
	defer func() {
		fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = shutdown(fctx)
	}()
	conns := map[int]*grpc.ClientConn{}
	for _, p := range []int{50051, 50052, 50053, 50054} {
		c, err := dial(host, p)
		if err != nil {
			return err
		}
		defer c.Close()
		conns[p] = c
	}
	cust := customersv1.NewCustomerServiceClient(conns[50051])
	orders := ordersv1.NewOrderServiceClient(conns[50052])
	inv := inventoryv1.NewInventoryServiceClient(conns[50053])
	pay := paymentsv1.NewPaymentServiceClient(conns[50054])

	runID := strings.ToUpper(uuid.NewString()[:8])
	total := orderCount(rate, duration)
	skus := make([]string, nProducts)
	for i := range skus {
		skus[i] = fmt.Sprintf("LOAD-%s-%d", runID, i)
		if _, err := inv.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: skus[i], Name: "load " + runID, Price: usd(100), Stock: int64(total * 2)}); err != nil {
			return fmt.Errorf("create product (is `make run` running?): %w", err)
		}
	}
	ids := make([]string, nCustomers)
	for i := range ids {
		r, err := cust.RegisterCustomer(ctx, &customersv1.RegisterCustomerRequest{Email: fmt.Sprintf("load-%s-%d@example.com", strings.ToLower(runID), i), Name: "Load"})
		if err != nil {
			return err
		}
		ids[i] = r.GetCustomer().GetCustomerId()
	}
	for _, id := range ids {
		for {
			_, err := pay.TopUp(ctx, &paymentsv1.TopUpRequest{CustomerId: id, Amount: usd(1_000_000_00), IdempotencyKey: "load-" + id})
			if err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond) // the account opens asynchronously
		}
	}

	fmt.Printf("loadgen: %d orders at %d/s for %s from %d customers, of %d products\n", total, rate, duration, nCustomers, nProducts)
	var mu sync.Mutex
	var createLat, terminalLat []time.Duration
	outcomes := map[string]int{}
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	start := time.Now()
	tl := newTimeline(start)
	scrapeCtx, stopScraping := context.WithCancel(ctx)
	defer stopScraping()
	scraped := make(chan struct{})
	if plot != "" {
		go func() {
			defer close(scraped)
			tl.scrapeLoop(scrapeCtx, metrics)
		}()
	}
	cpuBefore := cpuSnapshot(ctx, metrics)
	var lastDone time.Time
	for i := 0; i < total; i++ {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			tl.addSent(t0)
			o, err := orders.CreateOrder(ctx, &ordersv1.CreateOrderRequest{CustomerId: ids[i%nCustomers],
				Items: []*ordersv1.CreateOrderItem{{Sku: skus[i%nProducts], Quantity: 1}}, IdempotencyKey: fmt.Sprintf("load-%s-%d", runID, i)})
			if err != nil {
				key := "CreateOrder error: " + err.Error()
				if status.Code(err) == codes.ResourceExhausted {
					key = "refused (RESOURCE_EXHAUSTED, nothing written)"
					tl.addRefused(t0)
				}
				mu.Lock()
				outcomes[key]++
				mu.Unlock()
				return
			}
			t1 := time.Now()
			final, err := watch(ctx, orders, o.GetOrder().GetOrderId())
			t2 := time.Now()
			mu.Lock()
			defer mu.Unlock()
			createLat = append(createLat, t1.Sub(t0))
			if err != nil {
				outcomes["watch error: "+err.Error()]++
				return
			}
			terminalLat = append(terminalLat, t2.Sub(t0))
			tl.addTerminal(t0, t2)
			outcomes[final.GetStatus().String()+" "+final.GetFailureReason()]++
			if t2.After(lastDone) {
				lastDone = t2
			}
		}()
	}
	tick.Stop()
	wg.Wait()
	cpu := cpuPerOrder(cpuBefore, cpuSnapshot(ctx, metrics), len(terminalLat))
	fmt.Printf("\norders:     %d sent, outcomes %v\n", total, outcomes)
	fmt.Println(throughput(len(terminalLat), lastDone.Sub(start)))
	fmt.Printf("CreateOrder RPC latency:          %s\n", percentiles(createLat))
	fmt.Printf("CreateOrder -> terminal latency:  %s\n", percentiles(terminalLat))
	if cpu != "" {
		// Analytics scores confirmed orders on its own schedule: when it
		// falls behind, its share here is of the orders it got to.
		fmt.Printf("CPU per order (ms): %s (each service's %s over the run; PostgreSQL and the broker are not services)\n", cpu, cpuSeries)
	}
	if plot != "" {
		// A few more samples after the last order, so that the picture
		// shows the consumers' lag draining.
		time.Sleep(plotTail)
		stopScraping()
		<-scraped
		title := fmt.Sprintf("make loadgen RATE=%d DURATION=%s: %d sent, %s", rate, duration, total, summary(outcomes))
		if err := tl.writePlot(plot, title); err != nil {
			return err
		}
		fmt.Printf("plot:       %s\n", plot)
	}

	if pgURL == "" {
		return nil
	}
	tps, err := pgbench(ctx, pgURL, pgbenchClients, 10*time.Second)
	if err != nil {
		return fmt.Errorf("pgbench: %w", err)
	}
	fmt.Printf("pgbench:    %.0f tps for one insert-order-plus-outbox transaction (%d clients, same cluster)\n", tps, pgbenchClients)
	return nil
}

func watch(ctx context.Context, orders ordersv1.OrderServiceClient, id string) (*ordersv1.Order, error) {
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	stream, err := orders.WatchOrder(wctx, &ordersv1.WatchOrderRequest{OrderId: id})
	if err != nil {
		return nil, err
	}
	var last *ordersv1.Order
	for {
		r, err := stream.Recv()
		if err != nil {
			if last != nil && last.GetStatus() != ordersv1.OrderStatus_ORDER_STATUS_PENDING {
				return last, nil
			}
			return nil, err
		}
		last = r.GetOrder()
	}
}

func percentiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "n/a"
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	p := func(q float64) time.Duration { return quantile(ds, q).Round(100 * time.Microsecond) }
	return fmt.Sprintf("p50 %s  p95 %s  p99 %s  max %s", p(0.50), p(0.95), p(0.99), p(1))
}

// pgbenchScript is one transaction shaped like CreateOrder's: the order, one
// item, and the ReserveStock event inserted into and deleted from the outbox
// (cdc mode), in a scratch database so that nothing is relayed.
const pgbenchScript = `\set n random(1, 9000000000000000000)
\set m random(1, 9000000000000000000)
BEGIN;
INSERT INTO orders (order_id, customer_id, status, saga_step, saga_deadline) VALUES (lpad(to_hex(:n), 32, '0')::uuid, gen_random_uuid(), 'PENDING', 'RESERVING', now() + interval '30 seconds');
INSERT INTO order_items (order_id, line, sku, quantity) VALUES (lpad(to_hex(:n), 32, '0')::uuid, 0, 'BENCH-1', 1);
INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES (lpad(to_hex(:m), 32, '0')::uuid, 'order', lpad(to_hex(:n), 32, '0'), 'switchyard.inventory.v1.ReserveStock', '\x0a2430303030');
DELETE FROM outbox WHERE id = lpad(to_hex(:m), 32, '0')::uuid;
COMMIT;
`

// pgbench runs pgbenchScript on the cluster of pgURL (in a scratch
// database) with clients connections for d and returns its transactions
// per second.
func pgbench(ctx context.Context, pgURL string, clients int, d time.Duration) (float64, error) {
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		return 0, err
	}
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'loadgen_pgbench')`).Scan(&exists); err != nil {
		return 0, err
	}
	if !exists {
		if _, err := conn.Exec(ctx, `CREATE DATABASE loadgen_pgbench`); err != nil {
			return 0, err
		}
	}
	conn.Close(ctx)
	cfg, err := pgx.ParseConfig(pgURL)
	if err != nil {
		return 0, err
	}
	cfg.Database = "loadgen_pgbench"
	bconn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, err
	}
	defer bconn.Close(ctx)
	if err := outbox.Migrate(ctx, bconn); err != nil {
		return 0, err
	}
	if _, err := bconn.Exec(ctx, `
		CREATE TABLE IF NOT EXISTS orders (order_id uuid PRIMARY KEY, customer_id uuid NOT NULL, status text NOT NULL,
			failure_reason text NOT NULL DEFAULT '', total_minor bigint NOT NULL DEFAULT 0, currency text NOT NULL DEFAULT 'USD',
			saga_step text NOT NULL, saga_deadline timestamptz, version bigint NOT NULL DEFAULT 1,
			create_time timestamptz NOT NULL DEFAULT now(), update_time timestamptz NOT NULL DEFAULT now());
		CREATE INDEX IF NOT EXISTS orders_customer_idx ON orders (customer_id, create_time DESC, order_id DESC);
		CREATE INDEX IF NOT EXISTS orders_deadline_idx ON orders (saga_deadline) WHERE saga_deadline IS NOT NULL;
		CREATE TABLE IF NOT EXISTS order_items (order_id uuid NOT NULL REFERENCES orders, line int NOT NULL, sku text NOT NULL,
			quantity bigint NOT NULL, unit_price_minor bigint, PRIMARY KEY (order_id, line));`); err != nil {
		return 0, err
	}
	bin, err := pgcluster.FindBinaries()
	if err != nil {
		return 0, err
	}
	// A file of its own (pgbench reads scripts only from files), removed
	// afterwards: a fixed name in /tmp would be another user's after their
	// run, and a symlink trap for root.
	f, err := os.CreateTemp("", "switchyard-pgbench-*.sql")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(pgbenchScript)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("write the pgbench script: %w", err)
	}
	seconds := max(1, int(d.Round(time.Second)/time.Second))
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "pgbench"), "-n", "-c", fmt.Sprint(clients), "-j", "2", "-T", fmt.Sprint(seconds),
		"-f", f.Name(), "-h", cfg.Host, "-p", fmt.Sprint(cfg.Port), "-U", cfg.User, "loadgen_pgbench")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%w\n%s", err, out)
	}
	re := regexp.MustCompile(`tps = ([0-9.]+)`)
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			var tps float64
			if _, err := fmt.Sscan(m[1], &tps); err != nil {
				return 0, fmt.Errorf("pgbench tps %q: %w", m[1], err)
			}
			return tps, nil
		}
	}
	return 0, fmt.Errorf("no tps in pgbench output:\n%s", out)
}
