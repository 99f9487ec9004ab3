package e2e

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
)

// After a burst of concurrent orders, cancellations and adjustments, with
// reads filling the cache all along, every cached entry equals the database
// (quietAndValid compares them) and GetProduct serves the database's
// counters.
func TestStockCacheEqualsDatabaseAfterBurst(t *testing.T) {
	t.Parallel()
	s := startShop(t)
	skus := []string{s.product(100, 60), s.product(250, 40), s.product(75, 25)}
	custs := []string{s.customer(1_000_000), s.customer(1_000_000), s.customer(1_000_000)}

	// A client reads its own write: AdjustStock writes the cache through
	// before it answers, so the next read does not see the cached value
	// it replaced (the updater's copy comes only later).
	for i := range 5 {
		s.stock(skus[0]) // read, and so cached
		adj := retry(t, func() (*inventoryv1.AdjustStockResponse, error) {
			return s.inventory.AdjustStock(ctx, &inventoryv1.AdjustStockRequest{Sku: skus[0], Delta: 1, IdempotencyKey: fmt.Sprintf("own-%d", i)})
		})
		if a, _ := s.stock(skus[0]); a != adj.GetProduct().GetAvailable() {
			t.Fatalf("GetProduct right after AdjustStock: available %d, want the %d just written", a, adj.GetProduct().GetAvailable())
		}
	}

	stop := make(chan struct{})
	var readers sync.WaitGroup
	var readErrs atomic.Int64
	for r := range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.inventory.GetProduct(ctx, &inventoryv1.GetProductRequest{Sku: skus[(r+i)%len(skus)]}); err != nil {
					readErrs.Add(1)
				}
			}
		}()
	}

	var wg sync.WaitGroup
	for w := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 10))
			for i := range 10 {
				sku := skus[rng.IntN(len(skus))]
				switch rng.IntN(3) {
				case 0, 1:
					o := s.order(custs[w%len(custs)], fmt.Sprintf("burst-%d-%d", w, i), item(sku, int64(1+rng.IntN(3))))
					if rng.IntN(2) == 0 {
						// Cancel at whatever point the saga has reached.
						_, _ = s.orders.CancelOrder(ctx, &ordersv1.CancelOrderRequest{OrderId: o.GetOrderId(), Reason: "changed my mind"})
					}
				case 2:
					delta := int64(1 + rng.IntN(5))
					if rng.IntN(2) == 0 {
						delta = -1 // may fail with FAILED_PRECONDITION at 0: fine
					}
					_, _ = s.inventory.AdjustStock(ctx, &inventoryv1.AdjustStockRequest{Sku: sku, Delta: delta, IdempotencyKey: fmt.Sprintf("adj-%d-%d", w, i)})
				}
			}
		}()
	}
	wg.Wait()
	s.quietAndValid() // includes: every cached entry equals the database
	close(stop)
	readers.Wait()
	if n := readErrs.Load(); n > 0 {
		t.Fatalf("%d GetProduct calls failed during the burst", n)
	}
	for _, sku := range skus {
		var available, reserved int64
		if err := s.check.Pool("inventory").QueryRow(ctx, `SELECT available, reserved FROM products WHERE sku = $1`, sku).Scan(&available, &reserved); err != nil {
			t.Fatal(err)
		}
		if a, r := s.stock(sku); a != available || r != reserved {
			t.Errorf("GetProduct(%s) = available %d reserved %d; database %d %d", sku, a, r, available, reserved)
		}
	}
	s.quietAndValid() // the reads above filled whatever was not cached
}

// Redis killed in the middle of a read load: not one GetProduct fails and
// inventory stays SERVING; Redis back: hits resume without a restart.
func TestGetProductSurvivesRedisKill(t *testing.T) {
	if e2eTransport() == "redis" {
		t.Skip("the cache shares the transport's redis-server here; killing it is the transport's failure, tested elsewhere")
	}
	t.Parallel()
	s := startShop(t)
	sku := s.product(100, 10)
	metric := func(result string) float64 {
		return scrape(t, s.stack.MetricsURL("inventory"))[`switchyard_cache_requests_total{result="`+result+`"}`]
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var calls, failures atomic.Int64
	var firstErr atomic.Value
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				calls.Add(1)
				resp, err := s.inventory.GetProduct(ctx, &inventoryv1.GetProductRequest{Sku: sku})
				if err != nil || resp.GetProduct().GetAvailable() != 10 {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%v (available %d)", err, resp.GetProduct().GetAvailable()))
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	testkit.WaitFor(t, time.Minute, "cache hits", func() bool { return metric("hit") > 100 })

	s.stack.KillRedis()
	errorsBefore := metric("error")
	atKill := calls.Load()
	testkit.WaitFor(t, time.Minute, "reads served while Redis is down", func() bool {
		return calls.Load() > atKill+500 && metric("error") > errorsBefore
	})
	conn, err := grpc.NewClient(s.stack.Addr("inventory"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("inventory health with Redis down: %v, %v; want SERVING", h.GetStatus(), err)
	}

	if err := s.stack.StartRedis(); err != nil {
		t.Fatal(err)
	}
	hits := metric("hit")
	testkit.WaitFor(t, time.Minute, "hits to resume", func() bool { return metric("hit") > hits+100 })
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of %d GetProduct calls failed; first: %v", n, calls.Load(), firstErr.Load())
	}
}

// A StockChanged that arrives late (a redelivery, a replay) at a key that
// expired or that Redis lost puts the database's current product in the
// cache, not the event's older counters.
func TestLateStockChangedMeetsAnEmptyKey(t *testing.T) {
	t.Parallel()
	s := startShop(t)
	sku := s.product(100, 10)
	for i := range 2 {
		retry(t, func() (*inventoryv1.AdjustStockResponse, error) {
			return s.inventory.AdjustStock(ctx, &inventoryv1.AdjustStockRequest{Sku: sku, Delta: 1, IdempotencyKey: fmt.Sprintf("late-%d", i)})
		})
	}
	s.quietAndValid()
	opts, err := redis.ParseURL(s.stack.CacheURL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	if err := rdb.Del(ctx, "switchyard:inventory:product:"+sku).Err(); err != nil {
		t.Fatal(err)
	}
	// The product's first change again (version 2; the database is at 3).
	payload, err := proto.Marshal(&inventoryv1.StockChanged{Sku: sku, Available: 11, Version: 2})
	if err != nil {
		t.Fatal(err)
	}
	msg := envelope.Encode("switchyard.", "/switchyard/e2e", outbox.Record{ID: uuid.New(), AggregateType: "product", AggregateID: sku,
		Type: "switchyard.inventory.v1.StockChanged", Payload: payload, CreatedAt: time.Now()}, nil)
	tr, err := s.stack.OpenTransport()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	p, err := tr.NewPublisher("e2e-late", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	recorded := func() float64 {
		return scrape(t, s.stack.MetricsURL("inventory"))["switchyard_cache_update_age_seconds_count"]
	}
	before := recorded()
	if err := p.Publish(ctx, msg, nil); err != nil || !p.Flush(time.Minute) {
		t.Fatalf("publish the late event: %v", err)
	}
	testkit.WaitFor(t, time.Minute, "the cache updater to take the late event", func() bool {
		n, err := transport.Backlog(ctx, tr, "inventory-cache", "switchyard.product")
		return err == nil && n == 0
	})
	s.quietAndValid() // compares the cache with the database
	if e, err := rdb.HGet(ctx, "switchyard:inventory:product:"+sku, "v").Result(); err != nil || e != "3" {
		t.Fatalf("cached version %q (%v) after the late event, want the database's 3", e, err)
	}
	// Version 3 was committed before the late event was sent: its age from
	// the event's time would be a guess, and too low here.
	if after := recorded(); after != before {
		t.Errorf("update ages recorded %v -> %v: the updater recorded an age for a version newer than its event's", before, after)
	}
}
