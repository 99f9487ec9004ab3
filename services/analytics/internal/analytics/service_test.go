package analytics

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	analyticsv1 "github.com/switchyard/switchyard/gen/go/switchyard/analytics/v1"
	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	moneyv1 "github.com/switchyard/switchyard/gen/go/switchyard/money/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/transport/transporttest"
)

func TestMain(m *testing.M) {
	// The scoring benchmark runs analytics instances as processes of this
	// binary (see benchInstance).
	if os.Getenv(benchInstanceEnv) != "" {
		runBenchInstance()
		return
	}
	testkit.Main(m)
}

// harness is a database and a broker, with analytics instances run
// in-process on them and events published as the other services would.
type harness struct {
	t       testing.TB
	db      string
	pool    *pgxpool.Pool
	bus     *transporttest.Bus
	broker  *testkit.Broker // nil on Redis
	pub     transport.Publisher
	env     map[string]string
	model   model
	events  int // published, duplicates not counted
	confirm []string
	// opts are the options of the instances start runs.
	opts Options
	// at, if set, is the time the events published carry instead of now.
	at time.Time
	// orderKey, if set, is the key orders are published with instead of
	// their id (the same key puts them in one partition).
	orderKey string
}

func newHarness(t testing.TB, env map[string]string) *harness {
	return newHarnessOn(t, "kafka", env)
}

// newHarnessOn is newHarness on a transport of kind ("kafka" or "redis").
func newHarnessOn(t testing.TB, kind string, env map[string]string) *harness {
	t.Helper()
	bus := transporttest.New(t, kind, 6)
	h := &harness{t: t, db: testkit.Database(t), bus: bus, broker: bus.Kafka(), env: env, model: newModel(),
		opts: Options{Work: time.Millisecond, RebuildPoll: 200 * time.Millisecond}}
	h.pool = testkit.Pool(t, h.db)
	var err error
	if h.pub, err = bus.Transport().NewPublisher("analytics-test", nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.pub.Close)
	return h
}

// instance is one running analytics process (in-process).
type instance struct {
	client analyticsv1.AnalyticsServiceClient
	stop   func()
}

func (h *harness) start() *instance {
	h.t.Helper()
	env := map[string]string{
		"SWITCHYARD_DATABASE_URL":     h.db,
		"SWITCHYARD_TRANSPORT":        h.bus.Kind(),
		"SWITCHYARD_KAFKA_BROKERS":    h.bus.Addr(),
		"SWITCHYARD_REDIS_URL":        h.bus.Addr(),
		"SWITCHYARD_GRPC_ADDR":        "127.0.0.1:0",
		"SWITCHYARD_METRICS_ADDR":     "127.0.0.1:0",
		"SWITCHYARD_SHUTDOWN_TIMEOUT": "5s",
	}
	for k, v := range h.env {
		env[k] = v
	}
	cfg, err := service.LoadConfig(0, func(k string) string { return env[k] })
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan net.Addr, 1)
	done := make(chan error, 1)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	spec := Spec(h.opts)
	go func() { done <- service.Run(ctx, spec, cfg, logger, func(a net.Addr) { addr <- a }) }()
	var conn *grpc.ClientConn
	select {
	case a := <-addr:
		if conn, err = grpc.NewClient(a.String(), grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			h.t.Fatal(err)
		}
	case err := <-done:
		h.t.Fatalf("analytics ended before listening: %v", err)
	}
	stopped := false
	in := &instance{client: analyticsv1.NewAnalyticsServiceClient(conn)}
	in.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			h.t.Errorf("analytics: %v", err)
		}
		conn.Close()
	}
	h.t.Cleanup(in.stop)
	// Ready once the first RPC is served.
	testkit.WaitFor(h.t, time.Minute, "analytics to be ready", func() bool {
		_, err := in.client.ListRebuilds(context.Background(), &analyticsv1.ListRebuildsRequest{})
		return err == nil
	})
	return in
}

// publish sends one event as its producer's relay would.
func (h *harness) publish(aggregateType, key string, ev proto.Message, id uuid.UUID) {
	h.t.Helper()
	payload, err := proto.Marshal(ev)
	if err != nil {
		h.t.Fatal(err)
	}
	at := h.at
	if at.IsZero() {
		at = time.Now()
	}
	msg := envelope.Encode("switchyard.", "/switchyard/test", outbox.Record{
		ID: id, AggregateType: aggregateType, AggregateID: key, Type: string(ev.ProtoReflect().Descriptor().FullName()),
		Payload: payload, CreatedAt: at,
	}, nil)
	acked := make(chan struct{})
	if err := h.pub.Publish(context.Background(), msg, func(transport.Delivery) { close(acked) }); err != nil {
		h.t.Fatal(err)
	}
	select {
	case <-acked:
	case err := <-h.pub.Failed():
		h.t.Fatal(err)
	case <-time.After(time.Minute):
		h.t.Fatal("publish not acknowledged within a minute")
	}
}

func (h *harness) register() string {
	id := uuid.NewString()
	h.publish("customer", id, &customersv1.CustomerRegistered{Customer: &customersv1.Customer{CustomerId: id, Email: id[:8] + "@example.com", Name: "T"}}, uuid.New())
	h.events++
	h.model.customers[id] = &analyticsv1.CustomerSummary{CustomerId: id, TotalSpent: usd(0)}
	return id
}

// order publishes a confirmed order of qty units of sku at price, or a
// cancelled one when reason is set, and returns its id.
func (h *harness) order(customer, sku string, qty, price int64, reason string) string {
	return h.placeOrder(uuid.NewString(), customer, sku, qty, price, reason)
}

// placeOrder is order with the order's id given.
func (h *harness) placeOrder(id, customer, sku string, qty, price int64, reason string) string {
	o := &ordersv1.Order{OrderId: id, CustomerId: customer,
		Items: []*ordersv1.OrderItem{{Sku: sku, Quantity: qty, UnitPrice: usd(price)}}, Total: usd(qty * price)}
	h.events++
	key := cmp.Or(h.orderKey, o.OrderId)
	if reason != "" {
		o.Status, o.FailureReason = ordersv1.OrderStatus_ORDER_STATUS_CANCELLED, reason
		h.publish("order", key, &ordersv1.OrderCancelled{Order: o}, uuid.New())
		h.model.cancel(o)
		return o.OrderId
	}
	o.Status = ordersv1.OrderStatus_ORDER_STATUS_CONFIRMED
	h.publish("order", key, &ordersv1.OrderConfirmed{Order: o}, uuid.New())
	h.model.confirm(o)
	h.confirm = append(h.confirm, o.OrderId)
	return o.OrderId
}

// refund cancels a confirmed order (CancelOrder on a CONFIRMED order).
func (h *harness) refund(orderID, customer, sku string, qty, price int64) {
	o := &ordersv1.Order{OrderId: orderID, CustomerId: customer, Status: ordersv1.OrderStatus_ORDER_STATUS_CANCELLED, FailureReason: "CANCELLED_BY_CUSTOMER",
		Items: []*ordersv1.OrderItem{{Sku: sku, Quantity: qty, UnitPrice: usd(price)}}, Total: usd(qty * price)}
	h.publish("order", orderID, &ordersv1.OrderCancelled{Order: o}, uuid.New())
	h.events++
	h.model.unconfirm(o)
	h.model.cancel(o)
}

// traffic publishes n orders over a few customers and SKUs: mostly
// confirmed, some cancelled for each reason, one refunded, and one event
// delivered twice.
func (h *harness) traffic(n int) {
	var customers []string
	for range 3 {
		customers = append(customers, h.register())
	}
	reasons := []string{"OUT_OF_STOCK", "UNKNOWN_SKU", "INSUFFICIENT_FUNDS", "TIMEOUT"}
	for i := range n {
		c, sku := customers[i%len(customers)], fmt.Sprintf("SKU-%d", i%4)
		reason := ""
		if i%5 == 4 {
			reason = reasons[i%len(reasons)]
		}
		h.order(c, sku, int64(1+i%3), 250, reason)
	}
	id := h.order(customers[0], "SKU-R", 2, 1000, "")
	h.refund(id, customers[0], "SKU-R", 2, 1000)
	// A redelivery: the same event id again.
	dup := uuid.New()
	ev := &customersv1.CustomerRegistered{Customer: &customersv1.Customer{CustomerId: customers[0]}}
	h.publish("customer", customers[0], ev, dup)
	h.publish("customer", customers[0], ev, dup)
	h.events++
}

// model is what the projections must say.
type model struct {
	report    *analyticsv1.SalesReport
	customers map[string]*analyticsv1.CustomerSummary
}

func newModel() model {
	return model{report: &analyticsv1.SalesReport{Revenue: usd(0)}, customers: map[string]*analyticsv1.CustomerSummary{}}
}

func usdOf(m *moneyv1.Money) int64 { return m.GetAmountMinor() }

func (m model) confirm(o *ordersv1.Order) {
	m.report.OrdersConfirmed++
	m.report.Revenue.AmountMinor += usdOf(o.Total)
	for _, it := range o.Items {
		line := m.sku(it.Sku)
		line.UnitsSold += it.Quantity
		line.Revenue.AmountMinor += it.Quantity * usdOf(it.UnitPrice)
	}
	c := m.customers[o.CustomerId]
	c.OrdersConfirmed++
	c.TotalSpent.AmountMinor += usdOf(o.Total)
}

func (m model) unconfirm(o *ordersv1.Order) {
	m.report.OrdersConfirmed--
	m.report.Revenue.AmountMinor -= usdOf(o.Total)
	for _, it := range o.Items {
		line := m.sku(it.Sku)
		line.UnitsSold -= it.Quantity
		line.Revenue.AmountMinor -= it.Quantity * usdOf(it.UnitPrice)
	}
	c := m.customers[o.CustomerId]
	c.OrdersConfirmed--
	c.TotalSpent.AmountMinor -= usdOf(o.Total)
}

func (m model) cancel(o *ordersv1.Order) {
	found := false
	for _, c := range m.report.OrdersCancelled {
		if c.FailureReason == o.FailureReason {
			c.Orders++
			found = true
		}
	}
	if !found {
		m.report.OrdersCancelled = append(m.report.OrdersCancelled, &analyticsv1.CancelledOrders{FailureReason: o.FailureReason, Orders: 1})
		sort.Slice(m.report.OrdersCancelled, func(i, j int) bool {
			return m.report.OrdersCancelled[i].FailureReason < m.report.OrdersCancelled[j].FailureReason
		})
	}
	m.customers[o.CustomerId].OrdersCancelled++
}

func (m model) sku(sku string) *analyticsv1.SkuSales {
	for _, s := range m.report.Skus {
		if s.Sku == sku {
			return s
		}
	}
	s := &analyticsv1.SkuSales{Sku: sku, Revenue: usd(0)}
	m.report.Skus = append(m.report.Skus, s)
	sort.Slice(m.report.Skus, func(i, j int) bool { return m.report.Skus[i].Sku < m.report.Skus[j].Sku })
	return s
}

// reportNow is the model's report without SKUs that sold nothing net.
func (m model) reportNow() *analyticsv1.SalesReport {
	r := proto.Clone(m.report).(*analyticsv1.SalesReport)
	r.Skus = nil
	for _, s := range m.report.Skus {
		if s.UnitsSold != 0 {
			r.Skus = append(r.Skus, s)
		}
	}
	return r
}

// waitAgrees waits until in's projections say what the model says.
func (h *harness) waitAgrees(in *instance) {
	h.t.Helper()
	want := h.model.reportNow()
	var got *analyticsv1.SalesReport
	testkit.WaitFor(h.t, 2*time.Minute, "the sales report to agree with what was published", func() bool {
		resp, err := in.client.GetSalesReport(context.Background(), &analyticsv1.GetSalesReportRequest{})
		if err != nil {
			return false
		}
		got = resp.GetReport()
		return proto.Equal(got, want)
	})
	for id, want := range h.model.customers {
		resp, err := in.client.GetCustomerSummary(context.Background(), &analyticsv1.GetCustomerSummaryRequest{CustomerId: id})
		if err != nil {
			h.t.Fatalf("GetCustomerSummary(%s): %v", id, err)
		}
		if !proto.Equal(resp.GetSummary(), want) {
			h.t.Errorf("summary of %s = %v, want %v", id, resp.GetSummary(), want)
		}
	}
}

// scores returns every stored score with its time.
func (h *harness) scores() map[string]time.Time {
	h.t.Helper()
	rows, err := h.pool.Query(context.Background(), `SELECT order_id::text, score_time FROM order_scores`)
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]time.Time{}
	var id string
	var at time.Time
	if _, err := pgx.ForEachRow(rows, []any{&id, &at}, func() error { out[id] = at; return nil }); err != nil {
		h.t.Fatal(err)
	}
	return out
}

func (h *harness) liveChecksum() string {
	h.t.Helper()
	var sum string
	err := pgx.BeginFunc(context.Background(), h.pool, func(tx pgx.Tx) error {
		var err error
		sum, err = checksum(context.Background(), tx, liveSchema)
		return err
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return sum
}

// Registrations, confirmed, cancelled and refunded orders, and a
// redelivered event: the report and the summaries agree exactly with what
// was published, every confirmed order has exactly one score.
func TestProjectionsAndScores(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	in := h.start()
	h.traffic(40)
	h.waitAgrees(in)
	scores := h.scores()
	if len(scores) != len(h.confirm) {
		t.Errorf("%d scores, want one for each of %d confirmed orders", len(scores), len(h.confirm))
	}
	for _, id := range h.confirm {
		resp, err := in.client.GetOrderScore(context.Background(), &analyticsv1.GetOrderScoreRequest{OrderId: id})
		if err != nil {
			t.Fatalf("GetOrderScore(%s): %v", id, err)
		}
		if s := resp.GetScore().GetScore(); s <= 0 || s > 1000 {
			t.Errorf("score of %s = %d, want 1..1000", id, s)
		}
	}
	for _, tc := range []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"unknown order", func() error {
			_, err := in.client.GetOrderScore(context.Background(), &analyticsv1.GetOrderScoreRequest{OrderId: uuid.NewString()})
			return err
		}, codes.NotFound},
		{"malformed order id", func() error {
			_, err := in.client.GetOrderScore(context.Background(), &analyticsv1.GetOrderScoreRequest{OrderId: "x"})
			return err
		}, codes.InvalidArgument},
		{"unknown customer", func() error {
			_, err := in.client.GetCustomerSummary(context.Background(), &analyticsv1.GetCustomerSummaryRequest{CustomerId: uuid.NewString()})
			return err
		}, codes.NotFound},
		{"malformed rebuild id", func() error {
			_, err := in.client.GetRebuild(context.Background(), &analyticsv1.GetRebuildRequest{RebuildId: "x"})
			return err
		}, codes.InvalidArgument},
		{"unknown rebuild", func() error {
			_, err := in.client.GetRebuild(context.Background(), &analyticsv1.GetRebuildRequest{RebuildId: uuid.NewString()})
			return err
		}, codes.NotFound},
	} {
		if err := tc.call(); status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
}

// waitSwapped waits for the rebuild to be swapped in, calling during
// while it runs.
func waitSwapped(t *testing.T, in *instance, id string, during func()) *analyticsv1.Rebuild {
	t.Helper()
	var r *analyticsv1.Rebuild
	testkit.WaitFor(t, 3*time.Minute, "rebuild "+id+" to be swapped in", func() bool {
		if during != nil {
			during()
		}
		resp, err := in.client.GetRebuild(context.Background(), &analyticsv1.GetRebuildRequest{RebuildId: id})
		if err != nil {
			t.Fatalf("GetRebuild: %v", err)
		}
		r = resp.GetRebuild()
		if r.GetState() == analyticsv1.RebuildState_REBUILD_STATE_FAILED {
			t.Fatalf("rebuild failed: %s", r.GetError())
		}
		return r.GetState() == analyticsv1.RebuildState_REBUILD_STATE_SWAPPED
	})
	return r
}

// A rebuild of quiet projections produces identical ones (same checksum);
// reads keep succeeding during it; it recomputes no score; it applied
// every event once, in batches.
func TestRebuildMatchesLive(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	in := h.start()
	h.traffic(200)
	h.waitAgrees(in)
	before, scores := h.liveChecksum(), h.scores()

	resp, err := in.client.StartRebuild(context.Background(), &analyticsv1.StartRebuildRequest{})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetRebuild().GetRebuildId()
	again, err := in.client.StartRebuild(context.Background(), &analyticsv1.StartRebuildRequest{})
	if err != nil || again.GetRebuild().GetRebuildId() != id {
		t.Fatalf("a second StartRebuild while one runs: %v %v, want the running one %s", again, err, id)
	}
	reads := 0
	r := waitSwapped(t, in, id, func() {
		got, err := in.client.GetSalesReport(context.Background(), &analyticsv1.GetSalesReportRequest{})
		if err != nil {
			t.Fatalf("GetSalesReport during the rebuild: %v", err)
		}
		if !proto.Equal(got.GetReport(), h.model.reportNow()) {
			t.Fatalf("GetSalesReport during the rebuild = %v, want the live report %v", got.GetReport(), h.model.reportNow())
		}
		reads++
	})
	if after := h.liveChecksum(); after != before {
		t.Errorf("checksum after the rebuild %s, before %s", after, before)
	}
	if r.GetEventsApplied() != int64(h.events) || r.GetLag() != 0 || r.GetFinishTime() == nil {
		t.Errorf("rebuild %v: want %d events applied, lag 0, a finish time", r, h.events)
	}
	if got := h.scores(); fmt.Sprint(got) != fmt.Sprint(scores) {
		t.Errorf("scores changed by the rebuild: %d before, %d after", len(scores), len(got))
	}
	h.waitAgrees(in)
	// The replay's transactions each applied several events.
	var txns, events int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(DISTINCT xmin::text), count(*) FROM live.applied`).Scan(&txns, &events); err != nil {
		t.Fatal(err)
	}
	if txns >= events {
		t.Errorf("%d events applied in %d transactions: want batches", events, txns)
	}
	t.Logf("%d reads during the rebuild; %d events applied in %d transactions", reads, events, txns)
	list, err := in.client.ListRebuilds(context.Background(), &analyticsv1.ListRebuildsRequest{})
	if err != nil || len(list.GetRebuilds()) != 1 || list.GetRebuilds()[0].GetRebuildId() != id {
		t.Errorf("ListRebuilds = %v, %v; want the one rebuild", list, err)
	}
}

// Events that arrive while a rebuild runs end up in the rebuilt
// projections exactly once (the live group applies them to both sets).
func TestRebuildWhileEventsArrive(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	in := h.start()
	h.traffic(100)
	h.waitAgrees(in)
	resp, err := in.client.StartRebuild(context.Background(), &analyticsv1.StartRebuildRequest{})
	if err != nil {
		t.Fatal(err)
	}
	customer := h.register()
	waitSwapped(t, in, resp.GetRebuild().GetRebuildId(), func() {
		h.order(customer, "SKU-LIVE", 1, 100, "")
	})
	h.order(customer, "SKU-LIVE", 1, 100, "")
	h.waitAgrees(in)
	if got := len(h.scores()); got != len(h.confirm) {
		t.Errorf("%d scores, want %d", got, len(h.confirm))
	}
}

// A batch that rolls back because of a poison event among its orders is
// applied again one event at a time without scoring its orders again:
// the instance remembers the scores it computed.
func TestRetriedBatchScoresOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	var mu sync.Mutex
	computed := map[string]int{}
	h.opts.scored = func(orderID string) {
		mu.Lock()
		defer mu.Unlock()
		computed[orderID]++
	}
	in := h.start()
	customer := h.register()
	h.order(customer, "SKU-FIRST", 1, 100, "")
	h.waitAgrees(in)
	// Published while no instance runs, on one partition, so that they
	// arrive as one batch: orders, a poison event, more orders.
	in.stop()
	h.orderKey = uuid.NewString()
	for range 4 {
		h.order(customer, "SKU-BATCH", 1, 100, "")
	}
	poison := &ordersv1.Order{OrderId: uuid.NewString(), CustomerId: "not-a-uuid", Status: ordersv1.OrderStatus_ORDER_STATUS_CONFIRMED}
	h.publish("order", h.orderKey, &ordersv1.OrderConfirmed{Order: poison}, uuid.New())
	h.order(customer, "SKU-BATCH", 1, 100, "")
	in = h.start()
	h.waitAgrees(in)
	mu.Lock()
	defer mu.Unlock()
	for _, id := range h.confirm {
		if computed[id] != 1 {
			t.Errorf("order %s scored %d times, want once", id, computed[id])
		}
	}
}

// A rebuild is swapped in once its replay has finished the events before
// the topics' ends recorded when it started, however many have come
// since: under steady traffic there may never be a moment when the
// replay has nothing left. Here an order that arrives after the ends
// cannot be finished at all (a lock holds both groups' transactions that
// apply it to the new tables), and the swap still comes. Afterwards the
// replay's consumer group and its inbox rows are deleted.
func TestRebuildSwapsWhileNewEventsWait(t *testing.T) {
	t.Parallel()
	for _, kind := range transporttest.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			rebuildSwapsWhileNewEventsWait(t, kind)
		})
	}
}

func rebuildSwapsWhileNewEventsWait(t *testing.T, kind string) {
	ctx := context.Background()
	h := newHarnessOn(t, kind, nil)
	in := h.start()
	h.traffic(50)
	h.waitAgrees(in)
	resp, err := in.client.StartRebuild(ctx, &analyticsv1.StartRebuildRequest{})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetRebuild().GetRebuildId()
	testkit.WaitFor(t, time.Minute, "the rebuild's ends to be recorded", func() bool {
		var recorded bool
		if err := h.pool.QueryRow(ctx, `SELECT ends IS NOT NULL FROM rebuilds WHERE rebuild_id = $1`, id).Scan(&recorded); err != nil {
			t.Fatal(err)
		}
		return recorded
	})

	// The lock loadFacts takes on the order in the rebuild's tables.
	held := uuid.NewString()
	lock, err := h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(ctx)
	if _, err := lock.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1 || $2::uuid::text, 0))`, "rebuild_"+uuidHex(id), held); err != nil {
		t.Fatal(err)
	}
	h.placeOrder(held, h.register(), "SKU-HELD", 1, 100, "")
	// The swap's transaction then waits for the live transaction that
	// holds the rebuild's row and waits for the lock.
	testkit.WaitFor(t, 2*time.Minute, "the swap to wait for the held order's transaction", func() bool {
		var waiting bool
		if err := h.pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE 'SELECT state FROM rebuilds WHERE rebuild_id = $1 FOR UPDATE%')`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		return waiting
	})
	if err := lock.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitSwapped(t, in, id, nil)
	h.waitAgrees(in)
	if got := len(h.scores()); got != len(h.confirm) {
		t.Errorf("%d scores, want %d", got, len(h.confirm))
	}

	group := "analytics-rebuild-" + uuidHex(id)
	testkit.WaitFor(t, time.Minute, "the replay group to be deleted", func() bool {
		var deleted bool
		if err := h.pool.QueryRow(ctx, `SELECT group_deleted FROM rebuilds WHERE rebuild_id = $1`, id).Scan(&deleted); err != nil {
			t.Fatal(err)
		}
		return deleted
	})
	// The group's committed offsets are gone: it would read everything again.
	backlog, err := transport.Backlog(ctx, h.bus.Transport(), group, "switchyard.customer", "switchyard.order")
	if err != nil {
		t.Fatal(err)
	}
	var inbox int
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM inbox WHERE consumer_group = $1`, group).Scan(&inbox); err != nil {
		t.Fatal(err)
	}
	if backlog < int64(h.events) || inbox != 0 {
		t.Errorf("after the group's deletion: its backlog %d (want all %d events) and %d inbox rows (want 0)", backlog, h.events, inbox)
	}
}

// A rebuild interrupted by a stop of the service resumes when it comes
// back and finishes with the same projections.
func TestRebuildResumesAfterRestart(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	in := h.start()
	h.traffic(100)
	h.waitAgrees(in)
	before := h.liveChecksum()
	resp, err := in.client.StartRebuild(context.Background(), &analyticsv1.StartRebuildRequest{})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetRebuild().GetRebuildId()
	// Hold the replay back (its inserts into its ledger wait for this lock)
	// so that the stop finds it running.
	ctx := context.Background()
	lock, err := h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	schema := "rebuild_" + uuidHex(id)
	if _, err := lock.Exec(ctx, `LOCK TABLE `+table(schema, "applied")+` IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	var state string
	if err := lock.QueryRow(ctx, `SELECT state FROM rebuilds WHERE rebuild_id = $1`, id).Scan(&state); err != nil || state != "RUNNING" {
		t.Fatalf("rebuild state %q (%v) under the lock, want RUNNING", state, err)
	}
	in.stop()
	if err := lock.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	in = h.start()
	waitSwapped(t, in, id, nil)
	if after := h.liveChecksum(); after != before {
		t.Errorf("checksum after the resumed rebuild %s, before %s", after, before)
	}
	h.waitAgrees(in)
}

func uuidHex(id string) string {
	u := uuid.MustParse(id)
	return fmt.Sprintf("%x", u[:])
}

// from_time: before the retained range is FAILED_PRECONDITION, in the
// future INVALID_ARGUMENT; within it, only events from then on are
// replayed.
func TestRebuildFromTime(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SWITCHYARD_TOPIC_RETENTION": "1h"})
	in := h.start()
	ctx := context.Background()
	for _, tc := range []struct {
		from time.Time
		want codes.Code
	}{
		{time.Now().Add(-2 * time.Hour), codes.FailedPrecondition},
		{time.Now().Add(time.Hour), codes.InvalidArgument},
	} {
		_, err := in.client.StartRebuild(ctx, &analyticsv1.StartRebuildRequest{FromTime: timestamppb.New(tc.from)})
		if status.Code(err) != tc.want {
			t.Errorf("StartRebuild from %s: %v, want %s", tc.from, err, tc.want)
		}
	}
	early := h.register()
	h.order(early, "SKU-OLD", 1, 100, "")
	h.waitAgrees(in)
	cut := time.Now()
	late := h.register()
	h.order(late, "SKU-NEW", 1, 100, "")
	h.waitAgrees(in)
	resp, err := in.client.StartRebuild(ctx, &analyticsv1.StartRebuildRequest{FromTime: timestamppb.New(cut)})
	if err != nil {
		t.Fatal(err)
	}
	r := waitSwapped(t, in, resp.GetRebuild().GetRebuildId(), nil)
	if r.GetEventsApplied() != 2 || !r.GetFromTime().AsTime().Equal(cut.Truncate(time.Microsecond)) {
		t.Errorf("rebuild %v: want the 2 events from %s", r, cut)
	}
	rep, err := in.client.GetSalesReport(ctx, &analyticsv1.GetSalesReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.GetReport().GetSkus()) != 1 || rep.GetReport().GetSkus()[0].GetSku() != "SKU-NEW" {
		t.Errorf("report after a rebuild from %s = %v, want SKU-NEW only", cut, rep.GetReport())
	}
	if _, err := in.client.GetCustomerSummary(ctx, &analyticsv1.GetCustomerSummaryRequest{CustomerId: early}); status.Code(err) != codes.NotFound {
		t.Errorf("summary of a customer registered before from_time: %v, want NOT_FOUND", err)
	}

	// The live projections now count events from from_time on: one
	// written before it that arrives only now (or that a live batch was
	// still scoring when the swap committed) is left out, as the replay
	// left it out, and one written after it counts.
	h.at = cut.Add(-time.Second)
	h.order(late, "SKU-LATE", 1, 100, "")
	h.at = time.Time{}
	h.order(late, "SKU-NEW", 1, 100, "")
	testkit.WaitFor(t, time.Minute, "the live group to finish both orders", func() bool {
		n, err := transport.Backlog(ctx, h.bus.Transport(), "analytics", "switchyard.customer", "switchyard.order")
		return err == nil && n == 0
	})
	rep, err = in.client.GetSalesReport(ctx, &analyticsv1.GetSalesReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if skus := rep.GetReport().GetSkus(); len(skus) != 1 || skus[0].GetSku() != "SKU-NEW" || skus[0].GetUnitsSold() != 2 {
		t.Errorf("report = %v, want 2 units of SKU-NEW only (the order written before from_time left out)", rep.GetReport())
	}
}
