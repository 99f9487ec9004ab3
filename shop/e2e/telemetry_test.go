package e2e

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonv1 "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/grpc"

	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/shop/registry"
)

// span is what the test's OTLP receiver keeps of an exported span.
type span struct {
	service, name, kind string
	trace, id, parent   string
	attrs               map[string]string
}

// collector is an OTLP/gRPC trace receiver.
type collector struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []span
}

func attrString(v *commonv1.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonv1.AnyValue_StringValue:
		return x.StringValue
	case *commonv1.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonv1.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	}
	return fmt.Sprint(v)
}

func (c *collector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				service = attrString(a.GetValue())
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				attrs := map[string]string{}
				for _, a := range sp.GetAttributes() {
					attrs[a.GetKey()] = attrString(a.GetValue())
				}
				c.spans = append(c.spans, span{
					service: service, name: sp.GetName(), kind: sp.GetKind().String(),
					trace: hex.EncodeToString(sp.GetTraceId()), id: hex.EncodeToString(sp.GetSpanId()),
					parent: hex.EncodeToString(sp.GetParentSpanId()), attrs: attrs,
				})
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (c *collector) inTrace(traceID string) []span {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []span
	for _, s := range c.spans {
		if s.trace == traceID {
			out = append(out, s)
		}
	}
	return out
}

func (c *collector) find(match func(span) bool) (span, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.spans {
		if match(s) {
			return s, true
		}
	}
	return span{}, false
}

func startCollector(t *testing.T) (*collector, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, c)
	go func() {
		// Serve returns nil once the cleanup stops it.
		if err := srv.Serve(lis); err != nil {
			t.Errorf("OTLP collector: %v", err)
		}
	}()
	t.Cleanup(srv.Stop)
	return c, lis.Addr().String()
}

func (c *collector) wait(t *testing.T, what string, match func(span) bool) span {
	t.Helper()
	var found span
	testkit.WaitFor(t, time.Minute, "an exported span for "+what, func() bool {
		var ok bool
		found, ok = c.find(match)
		return ok
	})
	return found
}

// One CreateOrder that ends CONFIRMED is one trace through orders,
// inventory, payments and notifications (customers takes no part in an
// order), with an unbroken parent chain from the gRPC server span to the
// notification handler's span; relay and consumer spans carry the
// messaging attributes; a log line of the traced RPC carries its trace id;
// and a cancelled order's trace holds its compensation.
func TestOneTracePerOrder(t *testing.T) {
	t.Parallel()
	col, addr := startCollector(t)
	s := startShop(t,
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://"+addr,
		"OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	)
	cust, sku := s.customer(10_000), s.product(1_000, 10)
	o := s.order(cust, "", item(sku, 2))
	wantFinal(t, s.final(o.GetOrderId()), confirmed, "")

	root := col.wait(t, "the CreateOrder server span", func(sp span) bool {
		return sp.service == "orders" && sp.kind == "SPAN_KIND_SERVER" && strings.HasSuffix(sp.name, "OrderService/CreateOrder")
	})
	leaf := col.wait(t, "notifications handling OrderConfirmed", func(sp span) bool {
		return sp.trace == root.trace && sp.service == "notifications" && sp.attrs["cloudevents.event_type"] == "switchyard.orders.v1.OrderConfirmed"
	})
	// Each service exports on its own schedule: wait until the parent
	// chain from the leaf reaches the root (a broken chain fails after
	// the wait, with the details below).
	testkit.WaitFor(t, time.Minute, "the order's trace to be exported by every service", func() bool {
		byID := map[string]span{}
		for _, sp := range col.inTrace(root.trace) {
			byID[sp.id] = sp
		}
		for cur := leaf; cur.parent != ""; {
			var ok bool
			if cur, ok = byID[cur.parent]; !ok {
				return false
			}
		}
		return true
	})
	spans := col.inTrace(root.trace)
	byID := map[string]span{}
	services := map[string]bool{}
	for _, sp := range spans {
		byID[sp.id] = sp
		services[sp.service] = true
	}
	for _, svc := range []string{"orders", "inventory", "payments", "notifications"} {
		if !services[svc] {
			t.Errorf("trace %s has no span from %s (services: %v)", root.trace, svc, services)
		}
	}
	var chain []string
	for cur := leaf; ; {
		chain = append(chain, cur.service+":"+cur.name)
		if cur.parent == "" {
			if cur.id != root.id {
				t.Fatalf("the chain from the notification handler ends at %s, not at CreateOrder: %v", cur.name, chain)
			}
			break
		}
		parent, ok := byID[cur.parent]
		if !ok {
			t.Fatalf("span %s's parent %s was not exported: the chain is broken: %v", cur.name, cur.parent, chain)
		}
		cur = parent
	}
	t.Logf("parent chain (%d hops): %s", len(chain), strings.Join(chain, " <- "))
	kinds := map[string]int{}
	position := "messaging.kafka.offset"
	if e2eTransport() == "redis" {
		position = "messaging.redis.entry_id"
	}
	for _, sp := range spans {
		if sp.attrs["messaging.system"] == "" {
			continue
		}
		kinds[sp.kind]++
		if sp.attrs["messaging.system"] != e2eTransport() {
			t.Errorf("%s span %q has messaging.system %q, want %q", sp.service, sp.name, sp.attrs["messaging.system"], e2eTransport())
		}
		for _, k := range []string{"messaging.system", "messaging.destination.name", "messaging.operation.type", "messaging.message.id", "messaging.destination.partition.id", position} {
			if sp.attrs[k] == "" {
				t.Errorf("%s span %q lacks %s", sp.service, sp.name, k)
			}
		}
	}
	if kinds["SPAN_KIND_PRODUCER"] < 5 || kinds["SPAN_KIND_CONSUMER"] < 5 {
		t.Errorf("messaging spans by kind %v, want the relays' producer and the consumers' spans", kinds)
	}

	// The access log line of the traced CreateOrder carries its trace id.
	if !strings.Contains(s.logs.String(), "trace_id="+root.trace) {
		t.Errorf("no log line carries trace_id=%s", root.trace)
	}
	found := false
	for _, line := range strings.Split(s.logs.String(), "\n") {
		if strings.Contains(line, "method=OrderService/CreateOrder") && strings.Contains(line, "trace_id="+root.trace) {
			found = true
		}
	}
	if !found {
		t.Errorf("the CreateOrder log line does not carry trace_id=%s", root.trace)
	}

	// A cancelled order's trace shows its compensation.
	poor := s.customer(100)
	c := s.order(poor, "", item(sku, 1))
	wantFinal(t, s.final(c.GetOrderId()), cancelled, "INSUFFICIENT_FUNDS")
	croot := col.wait(t, "the second CreateOrder", func(sp span) bool {
		return sp.kind == "SPAN_KIND_SERVER" && strings.HasSuffix(sp.name, "OrderService/CreateOrder") && sp.trace != root.trace
	})
	for _, ev := range []string{"switchyard.payments.v1.PaymentDeclined", "switchyard.inventory.v1.ReleaseStock", "switchyard.orders.v1.OrderCancelled"} {
		col.wait(t, ev+" in the cancelled order's trace", func(sp span) bool {
			return sp.trace == croot.trace && sp.attrs["cloudevents.event_type"] == ev && sp.kind == "SPAN_KIND_CONSUMER"
		})
	}
}

// groupTopics returns the topics of group's switchyard_consumer_lag_messages
// series in m: those whose partitions the group's member owns, sorted.
func groupTopics(m map[string]float64, group string) []string {
	var topics []string
	for k := range m {
		if !strings.HasPrefix(k, "switchyard_consumer_lag_messages{") || !strings.Contains(k, `group="`+group+`"`) {
			continue
		}
		_, rest, _ := strings.Cut(k, `topic="`)
		topic, _, _ := strings.Cut(rest, `"`)
		if !slices.Contains(topics, topic) {
			topics = append(topics, topic)
		}
	}
	slices.Sort(topics)
	return topics
}

func scrape(t testing.TB, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndex(line, " ")
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// sum adds every series of a metric name (all label sets).
func sum(m map[string]float64, name string) (float64, bool) {
	total, found := 0.0, false
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			total += v
			found = true
		}
	}
	return total, found
}

// Every service serves the named series, and they move: published and
// processed counters rise after an order, the DLQ counter after a poison
// message, and relay lag returns to zero once the backlog drains.
func TestMetricsMove(t *testing.T) {
	t.Parallel()
	s := startShop(t)
	cust, sku := s.customer(100_000), s.product(100, 1_000)
	s.quietAndValid()
	// The registry's Consumes (which the invariant checker and the chart's
	// KEDA triggers use) is what each service's own group really reads:
	// its handlers' event types decide that, not a list.
	for _, svc := range registry.Services {
		var got []string
		testkit.WaitFor(t, time.Minute, svc.Name+"'s group to read exactly its registry Consumes ["+strings.Join(svc.Consumes, ", ")+"]", func() bool {
			got = groupTopics(scrape(t, s.stack.MetricsURL(svc.Name)), svc.Name)
			return slices.Equal(got, svc.Consumes)
		})
	}
	before := map[string]map[string]float64{}
	for _, svc := range registry.Services {
		m := scrape(t, s.stack.MetricsURL(svc.Name))
		before[svc.Name] = m
		want := []string{`switchyard_db_pool_acquires_total{pool="main"}`, `switchyard_db_pool_max_connections{pool="watch"}`,
			"switchyard_db_pool_connections", "switchyard_db_pool_waits_total", "switchyard_db_pool_wait_seconds_total"}
		if svc.Emits {
			want = append(want, "switchyard_relay_events_published_total", "switchyard_relay_failures_total", "switchyard_relay_slot_lag_bytes",
				"switchyard_relay_oldest_unpublished_age_seconds", "switchyard_relay_active", "switchyard_relay_invisible_waits_total",
				"switchyard_relay_invisible_wait_seconds_total")
		} else if _, ok := sum(m, "switchyard_relay_active"); ok {
			t.Errorf("%s emits nothing but has a relay", svc.Name)
		}
		if len(svc.Consumes) > 0 {
			want = append(want, "switchyard_consumer_events_processed_total", "switchyard_consumer_duplicates_skipped_total",
				"switchyard_consumer_retries_total", "switchyard_consumer_dead_lettered_total")
		}
		for _, name := range want {
			if _, ok := sum(m, name); !ok {
				t.Errorf("%s does not serve %s", svc.Name, name)
			}
		}
	}
	if _, ok := sum(before["customers"], "switchyard_grpc_requests_total"); !ok {
		t.Error("customers does not serve switchyard_grpc_requests_total after RegisterCustomer")
	}
	// Admission control's series; with no order late, its limit is the
	// default SWITCHYARD_ORDERS_MAX_PENDING.
	for _, name := range []string{"switchyard_orders_pending", "switchyard_orders_tenth_oldest_pending_age_seconds", "switchyard_orders_rejected_overload_total"} {
		if _, ok := sum(before["orders"], name); !ok {
			t.Errorf("orders does not serve %s", name)
		}
	}
	if v, ok := sum(before["orders"], "switchyard_orders_admission_limit"); !ok || v != 100 {
		t.Errorf("orders' switchyard_orders_admission_limit = %v (served: %v), want the default 100", v, ok)
	}

	for i := 0; i < 30; i++ {
		s.order(cust, fmt.Sprintf("m-%d", i), item(sku, 1))
	}
	s.quietAndValid()
	after := map[string]map[string]float64{}
	for svc := range before {
		after[svc] = scrape(t, s.stack.MetricsURL(svc))
	}
	rose := func(svc, name string, by float64) {
		t.Helper()
		b, _ := sum(before[svc], name)
		a, _ := sum(after[svc], name)
		if a-b < by {
			t.Errorf("%s %s went from %v to %v, want a rise of at least %v", svc, name, b, a, by)
		}
	}
	rose("orders", "switchyard_relay_events_published_total", 30*3) // ReserveStock, ChargePayment, CommitStock+OrderConfirmed
	rose("inventory", "switchyard_consumer_events_processed_total", 30*2)
	rose("notifications", "switchyard_consumer_events_processed_total", 30)
	rose("orders", "switchyard_grpc_requests_total", 30)
	rose("orders", "switchyard_saga_outcomes_total", 30)
	rose("payments", "switchyard_db_round_trips_total", 30*3)            // BEGIN, the capture, COMMIT at the least
	rose("orders", `switchyard_db_pool_acquires_total{pool="main"}`, 30) // CreateOrder's transaction at the least
	if v, _ := sum(after["orders"], `switchyard_saga_outcomes_total{reason="",status="CONFIRMED"}`); v < 30 {
		t.Errorf("saga outcomes CONFIRMED = %v, want >= 30", v)
	}

	// A poison message on the order topic is dead-lettered by inventory.
	tr, err := s.stack.OpenTransport()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	p, err := tr.NewPublisher("e2e-poison", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	acked := make(chan struct{})
	poison := &transport.Message{Topic: "switchyard.order", Key: []byte("poison"), Value: []byte("not an event")}
	if err := p.Publish(context.Background(), poison, func(transport.Delivery) { close(acked) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-acked:
	case err := <-p.Failed():
		t.Fatal(err)
	}
	testkit.WaitFor(t, time.Minute, "inventory's dead-letter counter to rise after a poison message", func() bool {
		v, _ := sum(scrape(t, s.stack.MetricsURL("inventory")), "switchyard_consumer_dead_lettered_total")
		b, _ := sum(before["inventory"], "switchyard_consumer_dead_lettered_total")
		return v > b
	})

	// Once quiet, every relay's lag returns to zero.
	for _, svc := range registry.Names() {
		if s, _ := registry.Lookup(svc); !s.Emits {
			continue
		}
		testkit.WaitFor(t, time.Minute, svc+"'s relay lag (bytes and oldest unpublished age) to return to 0", func() bool {
			m := scrape(t, s.stack.MetricsURL(svc))
			lag, _ := sum(m, "switchyard_relay_slot_lag_bytes")
			age, _ := sum(m, "switchyard_relay_oldest_unpublished_age_seconds")
			return lag == 0 && age == 0
		})
	}
}
