// Package soak is the shop's chaos soak: it drives registrations, top-ups,
// stock adjustments, orders and cancellations at a steady rate against a
// running [stack.Stack] while injecting faults at random intervals — SIGKILL
// of a service, SIGKILL of the broker, an immediate (crash) restart of
// PostgreSQL, SIGSTOP of a service for longer than its group session, and a
// consumer group rewound to replay what it already applied — then waits for
// quiet and checks every invariant (package invariants) plus one of its own:
// every order the shop acknowledged exists.
package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	moneyv1 "github.com/switchyard/switchyard/gen/go/switchyard/money/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	paymentsv1 "github.com/switchyard/switchyard/gen/go/switchyard/payments/v1"
	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/shop/invariants"
	"github.com/switchyard/switchyard/shop/registry"
	"github.com/switchyard/switchyard/shop/stack"
)

// Options configure a soak.
type Options struct {
	// Duration is how long load runs and faults are injected.
	Duration time.Duration
	// Rate is CreateOrder calls per second; the other operations run at a
	// fraction of it. Default 10.
	Rate int
	// Seed makes the choice and timing of faults repeatable; 0 picks one.
	Seed uint64
	// Pause is how long a service stays stopped (SIGSTOP): longer than the
	// consumer group session (10 s), so its partitions move. Default 12s.
	Pause time.Duration
	// Log receives one line per fault and the summary.
	Log io.Writer
}

// Fault is one injected fault and what it did to the orders placed
// meanwhile.
type Fault struct {
	Kind   string // kill-service, kill-broker, restart-postgres, pause-service, rewind-group
	Target string
	Start  time.Time
	End    time.Time // when the shop was whole again
}

// Result is what a soak found.
type Result struct {
	Seed       uint64
	Orders     int // orders the shop acknowledged
	Faults     []Fault
	Violations []string
	// Latency describes CreateOrder-to-terminal latency (from the orders
	// database) of the orders placed without a fault and during each kind
	// of fault.
	Latency []string
}

// Summary is the soak's last line.
func (r Result) Summary() string {
	return fmt.Sprintf("soak: %d orders, %d faults, %d violations", r.Orders, len(r.Faults), len(r.Violations))
}

// Run soaks s. It returns an error when the soak itself could not run (the
// shop did not come back after a fault, or never became quiet); invariant
// violations are in the Result.
func Run(ctx context.Context, s *stack.Stack, opts Options) (Result, error) {
	if opts.Rate <= 0 {
		opts.Rate = 10
	}
	if opts.Pause <= 0 {
		opts.Pause = 12 * time.Second
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.Seed == 0 {
		opts.Seed = rand.Uint64()
	}
	res := Result{Seed: opts.Seed}
	rng := rand.New(rand.NewPCG(opts.Seed, opts.Seed>>1|1))
	d, err := dial(s)
	if err != nil {
		return res, err
	}
	defer d.close()
	if err := d.setUp(ctx, rng); err != nil {
		return res, fmt.Errorf("set up customers and products: %w", err)
	}
	fmt.Fprintf(opts.Log, "soak: seed %d, %d orders/s for %s\n", opts.Seed, opts.Rate, opts.Duration)

	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); d.load(loadCtx, opts.Rate, rng.Uint64()) }()

	deadline := time.Now().Add(opts.Duration)
	kinds := []string{"kill-service", "kill-broker", "restart-postgres", "pause-service", "rewind-group"}
	var faultErr error
	for i := 0; faultErr == nil; i++ {
		// Every kind once, in random order, before any repeats.
		if i%len(kinds) == 0 {
			rng.Shuffle(len(kinds), func(a, b int) { kinds[a], kinds[b] = kinds[b], kinds[a] })
		}
		gap := time.Duration(2000+rng.IntN(4000)) * time.Millisecond
		if time.Now().Add(gap).After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			faultErr = ctx.Err()
			continue
		case <-time.After(gap):
		}
		f, err := inject(ctx, s, kinds[i%len(kinds)], rng, opts)
		res.Faults = append(res.Faults, f)
		fmt.Fprintf(opts.Log, "soak: fault %d %s %s: whole again after %s\n", len(res.Faults), f.Kind, f.Target, f.End.Sub(f.Start).Round(time.Millisecond))
		faultErr = err
	}
	if faultErr == nil {
		select {
		case <-ctx.Done():
			faultErr = ctx.Err()
		case <-time.After(time.Until(deadline)):
		}
	}
	stopLoad()
	wg.Wait()
	res.Orders = int(d.acked.Load())
	if faultErr != nil {
		return res, faultErr
	}
	fmt.Fprintf(opts.Log, "soak: load stopped (%d orders acknowledged; calls failed during faults: %s); waiting for quiet\n", res.Orders, d.failures())

	tr, err := s.OpenTransport()
	if err != nil {
		return res, err
	}
	defer tr.Close()
	checker, err := invariants.Open(ctx, s.DatabaseURL, tr)
	if err != nil {
		return res, err
	}
	defer checker.Close()
	if url := s.CacheURL(); url != "" {
		// Every cached stock entry must equal the database too.
		if err := checker.UseStockCache(url); err != nil {
			return res, err
		}
	}
	if err := checker.WaitQuiet(ctx, 5*time.Minute); err != nil {
		return res, err
	}
	if err := checker.Check(ctx); err != nil {
		var v *invariants.Violations
		if !errors.As(err, &v) {
			return res, err
		}
		res.Violations = append(res.Violations, v.List...)
	}
	missing, err := d.missingOrders(ctx, checker)
	if err != nil {
		return res, err
	}
	res.Violations = append(res.Violations, missing...)
	res.Latency, err = latency(ctx, checker, res.Faults)
	return res, err
}

// inject runs one fault and waits until the shop is whole again.
func inject(ctx context.Context, s *stack.Stack, kind string, rng *rand.Rand, opts Options) (Fault, error) {
	f := Fault{Kind: kind, Start: time.Now()}
	var err error
	switch kind {
	case "kill-service":
		f.Target = registry.Services[rng.IntN(len(registry.Services))].Name
		s.Kill(f.Target)
		err = restart(ctx, s, f.Target)
	case "kill-broker":
		f.Target = "broker"
		if err = s.KillBroker(); err == nil {
			err = s.StartBroker()
		}
		if err == nil {
			err = waitAll(ctx, s)
		}
	case "restart-postgres":
		f.Target = "postgres"
		if err = s.RestartPostgres(ctx); err == nil {
			err = waitAll(ctx, s)
		}
	case "pause-service":
		f.Target = registry.Services[rng.IntN(len(registry.Services))].Name
		s.Pause(f.Target)
		select {
		case <-ctx.Done():
		case <-time.After(opts.Pause):
		}
		s.Resume(f.Target)
		err = waitAll(ctx, s)
	case "rewind-group":
		var consumers []registry.Service
		for _, svc := range registry.Services {
			if len(svc.Consumes) > 0 {
				consumers = append(consumers, svc)
			}
		}
		group := consumers[rng.IntN(len(consumers))]
		f.Target = group.Name
		// Kafka rewinds only a group without members: stop the service,
		// rewind once its member has left, start it again.
		s.Stop(f.Target)
		cfg := broker.Config{Brokers: s.KafkaAddr()}
		for attempt := 0; ; attempt++ {
			if err = broker.RewindGroup(ctx, cfg, f.Target, group.Consumes...); err == nil || attempt == 60 || ctx.Err() != nil {
				break
			}
			time.Sleep(time.Second)
		}
		if err != nil {
			err = fmt.Errorf("rewind %s: %w", f.Target, err)
		}
		if rerr := restart(ctx, s, f.Target); err == nil {
			err = rerr
		}
	default:
		err = fmt.Errorf("unknown fault %q", kind)
	}
	f.End = time.Now()
	return f, err
}

// restart starts a stopped service and waits until the shop is whole.
func restart(ctx context.Context, s *stack.Stack, name string) error {
	if err := s.StartService(name); err != nil {
		return err
	}
	return waitAll(ctx, s)
}

// waitAll waits until every service reports SERVING.
func waitAll(ctx context.Context, s *stack.Stack) error {
	for _, svc := range registry.Services {
		if err := s.WaitServing(ctx, svc.Name); err != nil {
			return err
		}
	}
	return nil
}

// driver holds the clients and what the load has done.
type driver struct {
	conns     []*grpc.ClientConn
	customers customersv1.CustomerServiceClient
	orders    ordersv1.OrderServiceClient
	inventory inventoryv1.InventoryServiceClient
	payments  paymentsv1.PaymentServiceClient

	mu       sync.Mutex
	buyers   []string // customers with an account
	skus     []string // set by setUp before the load starts, then only read
	placed   []string // acknowledged order ids
	acked    atomic.Int64
	failed   map[string]int // by gRPC code, or "skipped" when too many calls were in flight
	runID    string
	sequence atomic.Int64
}

func dial(s *stack.Stack) (*driver, error) {
	d := &driver{runID: strings.ToLower(uuid.NewString()[:8]), failed: map[string]int{}}
	conn := func(service string) (*grpc.ClientConn, error) {
		c, err := grpc.NewClient(s.Addr(service), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err == nil {
			d.conns = append(d.conns, c)
		}
		return c, err
	}
	for _, svc := range registry.Services {
		c, err := conn(svc.Name)
		if err != nil {
			d.close()
			return nil, err
		}
		switch svc.Name {
		case "customers":
			d.customers = customersv1.NewCustomerServiceClient(c)
		case "orders":
			d.orders = ordersv1.NewOrderServiceClient(c)
		case "inventory":
			d.inventory = inventoryv1.NewInventoryServiceClient(c)
		case "payments":
			d.payments = paymentsv1.NewPaymentServiceClient(c)
		}
	}
	return d, nil
}

func (d *driver) close() {
	for _, c := range d.conns {
		c.Close()
	}
}

func usd(minor int64) *moneyv1.Money { return &moneyv1.Money{Currency: "USD", AmountMinor: minor} }

// key returns a fresh idempotency key.
func (d *driver) key(what string) string {
	return fmt.Sprintf("soak-%s-%s-%d", d.runID, what, d.sequence.Add(1))
}

// setUp creates products and a first set of funded customers.
func (d *driver) setUp(ctx context.Context, rng *rand.Rand) error {
	for i := range 8 {
		sku := fmt.Sprintf("SOAK-%s-%d", strings.ToUpper(d.runID), i)
		_, err := d.inventory.CreateProduct(ctx, &inventoryv1.CreateProductRequest{Sku: sku, Name: "soak " + sku,
			Price: usd(int64(100 + rng.IntN(900))), Stock: int64(200 + rng.IntN(300))})
		if err != nil {
			return err
		}
		d.skus = append(d.skus, sku)
	}
	for range 10 {
		if err := d.register(ctx); err != nil {
			return err
		}
	}
	return nil
}

// register registers a customer and, once payments has opened the account
// (asynchronously, from the registration event), tops it up.
func (d *driver) register(ctx context.Context) error {
	n := d.sequence.Add(1)
	r, err := d.customers.RegisterCustomer(ctx, &customersv1.RegisterCustomerRequest{
		Email: fmt.Sprintf("soak-%s-%d@example.com", d.runID, n), Name: "Soak"})
	if err != nil {
		return err
	}
	id := r.GetCustomer().GetCustomerId()
	key := d.key("topup")
	for {
		_, err := d.payments.TopUp(ctx, &paymentsv1.TopUpRequest{CustomerId: id, Amount: usd(50_000), IdempotencyKey: key})
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	d.addBuyer(id)
	return nil
}

// addBuyer adds a customer whose account is open and funded.
func (d *driver) addBuyer(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.buyers = append(d.buyers, id)
}

// buyer returns a random customer with an account. The load registers
// customers while it places orders, so buyers is read under the lock
// (passing d.buyers to a function would read it before the lock is taken).
func (d *driver) buyer(rng *rand.Rand) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.buyers[rng.IntN(len(d.buyers))]
}

// load runs operations until ctx ends: per CreateOrder, on average 0.2
// cancellations, 0.1 top-ups, 0.05 stock adjustments and 0.02
// registrations. Calls that fail (during a fault) are counted, not retried:
// the invariants hold whatever the shop did with them.
func (d *driver) load(ctx context.Context, rate int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed>>1|1))
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, 64) // calls in flight
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		ops := []func(context.Context, *rand.Rand) error{d.order}
		for _, o := range []struct {
			p  float64
			op func(context.Context, *rand.Rand) error
		}{{0.2, d.cancel}, {0.1, d.topUp}, {0.05, d.adjust}, {0.02, func(ctx context.Context, _ *rand.Rand) error { return d.register(ctx) }}} {
			if rng.Float64() < o.p {
				ops = append(ops, o.op)
			}
		}
		for _, op := range ops {
			select {
			case sem <- struct{}{}:
			default:
				d.fail("skipped") // the shop is too slow to keep up
				continue
			}
			r := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				if err := op(cctx, r); err != nil {
					d.fail(status.Code(err).String())
				}
			}()
		}
	}
}

func (d *driver) fail(why string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failed[why]++
}

// failures lists the failed calls by reason.
func (d *driver) failures() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.failed) == 0 {
		return "none"
	}
	var parts []string
	for why, n := range d.failed {
		parts = append(parts, fmt.Sprintf("%d %s", n, why))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func (d *driver) order(ctx context.Context, rng *rand.Rand) error {
	items := []*ordersv1.CreateOrderItem{}
	for _, i := range rng.Perm(len(d.skus))[:1+rng.IntN(3)] {
		items = append(items, &ordersv1.CreateOrderItem{Sku: d.skus[i], Quantity: int64(1 + rng.IntN(3))})
	}
	r, err := d.orders.CreateOrder(ctx, &ordersv1.CreateOrderRequest{CustomerId: d.buyer(rng), Items: items, IdempotencyKey: d.key("order")})
	if err != nil {
		return err
	}
	d.acked.Add(1)
	d.mu.Lock()
	d.placed = append(d.placed, r.GetOrder().GetOrderId())
	d.mu.Unlock()
	return nil
}

func (d *driver) cancel(ctx context.Context, rng *rand.Rand) error {
	d.mu.Lock()
	n := len(d.placed)
	var id string
	if n > 0 {
		id = d.placed[n-1-rng.IntN(min(n, 20))] // a recent one: pending or just decided
	}
	d.mu.Unlock()
	if id == "" {
		return nil
	}
	_, err := d.orders.CancelOrder(ctx, &ordersv1.CancelOrderRequest{OrderId: id})
	return err
}

func (d *driver) topUp(ctx context.Context, rng *rand.Rand) error {
	_, err := d.payments.TopUp(ctx, &paymentsv1.TopUpRequest{CustomerId: d.buyer(rng),
		Amount: usd(int64(1000 + rng.IntN(9000))), IdempotencyKey: d.key("topup")})
	return err
}

func (d *driver) adjust(ctx context.Context, rng *rand.Rand) error {
	_, err := d.inventory.AdjustStock(ctx, &inventoryv1.AdjustStockRequest{Sku: d.skus[rng.IntN(len(d.skus))],
		Delta: int64(rng.IntN(40) - 10), IdempotencyKey: d.key("adjust")})
	return err
}

// missingOrders reports acknowledged orders the orders database lacks.
func (d *driver) missingOrders(ctx context.Context, c *invariants.Checker) ([]string, error) {
	d.mu.Lock()
	ids := append([]string(nil), d.placed...)
	d.mu.Unlock()
	rows, err := c.Pool("orders").Query(ctx, `SELECT id FROM unnest($1::uuid[]) AS id WHERE id NOT IN (SELECT order_id FROM orders)`, ids)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var v []string
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		v = append(v, fmt.Sprintf("order %s was acknowledged but does not exist", id))
	}
	return v, rows.Err()
}

// latency summarises CreateOrder-to-terminal latency per fault kind: the
// orders created from a fault's start until 5 s after the shop was whole,
// against those created outside every such window.
func latency(ctx context.Context, c *invariants.Checker, faults []Fault) ([]string, error) {
	rows, err := c.Pool("orders").Query(ctx, `SELECT create_time, update_time - create_time FROM orders WHERE status <> 'PENDING'`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	byKind := map[string][]time.Duration{}
	for rows.Next() {
		var at time.Time
		var took time.Duration
		if err := rows.Scan(&at, &took); err != nil {
			return nil, err
		}
		kind := "no fault"
		for _, f := range faults {
			if !at.Before(f.Start) && at.Before(f.End.Add(5*time.Second)) {
				kind = f.Kind
				break
			}
		}
		byKind[kind] = append(byKind[kind], took)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	kinds := make([]string, 0, len(byKind))
	for k := range byKind {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var out []string
	for _, k := range kinds {
		ds := byKind[k]
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		q := func(p float64) time.Duration { return ds[int(p*float64(len(ds)-1))].Round(time.Millisecond) }
		out = append(out, fmt.Sprintf("%-16s %5d orders  p50 %-8s p99 %-8s max %s", k, len(ds), q(0.5), q(0.99), q(1)))
	}
	return out, nil
}
