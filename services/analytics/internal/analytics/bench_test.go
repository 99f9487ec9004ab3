package analytics

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	analyticsv1 "github.com/switchyard/switchyard/gen/go/switchyard/analytics/v1"
	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/pgcluster"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
)

// benchInstanceEnv, set in a process of this test binary, makes it an
// analytics instance instead of a test run (see TestMain).
const benchInstanceEnv = "SWITCHYARD_BENCH_INSTANCE"

// runBenchInstance runs this process as cmd/analytics does: configured by
// the environment, until SIGTERM.
func runBenchInstance() {
	opts, err := OptionsFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "analytics: configuration:", err)
		os.Exit(2)
	}
	service.Main(Spec(opts))
	os.Exit(0)
}

// benchWork is what scoring an order costs in the benchmarks: the default.
const benchWork = DefaultWork

// BenchmarkScoring measures how many confirmed orders per second the
// analytics group scores with 1, 2 and 4 instances (processes of this
// binary sharing the group, each limited to procs cores with GOMAXPROCS),
// for CPU work and for waiting work of the same duration (20 ms), on topics
// of 6 or 2 partitions. The instances join first; once the group has
// settled they are paused (SIGSTOP), the order topic is filled with N
// OrderConfirmed events, and the clock runs from resuming them to the last
// score row, so the figure is throughput, not latency. It reports
// orders/s, the ceiling that applies (cores / work for CPU work, at most
// the cores the instances may use; partitions / work for waiting, since a
// partition's events are applied one after the other) and the share of
// that ceiling reached. Run it with
//
//	go test -run '^$' -bench Scoring -benchtime 1x ./services/analytics/internal/analytics/
func BenchmarkScoring(b *testing.B) {
	for _, c := range []scoringCase{
		{WorkCPU, 6, 1, 1}, {WorkCPU, 6, 2, 1}, {WorkCPU, 6, 4, 1}, {WorkCPU, 6, 1, 2},
		{WorkWait, 6, 1, 1}, {WorkWait, 6, 2, 1}, {WorkWait, 6, 4, 1},
		{WorkWait, 2, 1, 1}, {WorkWait, 2, 2, 1}, {WorkWait, 2, 4, 1},
	} {
		b.Run(fmt.Sprintf("%s/partitions=%d/instances=%d/procs=%d", c.kind, c.partitions, c.instances, c.procs), func(b *testing.B) {
			for range b.N {
				benchScoring(b, c)
			}
		})
	}
}

type scoringCase struct {
	kind       WorkKind
	partitions int
	instances  int
	procs      int // GOMAXPROCS of each instance
}

// ceiling is the most orders per second the case can score: every core
// the instances may use busy with scoring (CPU work), or every partition
// (waiting work).
func (c scoringCase) ceiling() float64 {
	per := float64(time.Second) / float64(benchWork)
	if c.kind == WorkWait {
		return float64(c.partitions) * per
	}
	return float64(min(c.instances*c.procs, runtime.NumCPU())) * per
}

func benchScoring(b *testing.B, c scoringCase) {
	b.StopTimer()
	h := newHarness(b, nil)
	for _, topic := range []string{"switchyard.order", "switchyard.customer"} {
		h.broker.CreateTopic(b, topic, c.partitions)
	}
	var procs []*benchProcess
	for k := range c.instances {
		procs = append(procs, h.startProcess(b, k, map[string]string{
			"SWITCHYARD_ANALYTICS_WORK":      benchWork.String(),
			"SWITCHYARD_ANALYTICS_WORK_KIND": string(c.kind),
			"SWITCHYARD_TOPIC_PARTITIONS":    strconv.Itoa(c.partitions),
			"GOMAXPROCS":                     strconv.Itoa(c.procs),
		}))
	}
	waitSettled(b, procs, c.partitions)

	// Long enough for the rejoins and the first fetches to be small next
	// to it: about 8 s at the ceiling.
	n := int(8 * c.ceiling())
	for _, p := range procs {
		p.signal(b, syscall.SIGSTOP)
	}
	h.prefill(b, confirmedOrders(n))
	b.StartTimer()
	cpu0, busy0 := procsCPU(b, procs), machine(b)
	start := time.Now()
	for _, p := range procs {
		p.signal(b, syscall.SIGCONT)
	}
	var scored int
	deadline := start.Add(10 * time.Minute)
	for scored < n {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d orders scored in 10 minutes", scored, n)
		}
		time.Sleep(20 * time.Millisecond)
		if err := h.pool.QueryRow(context.Background(), `SELECT count(*) FROM order_scores`).Scan(&scored); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	cpu, busy := procsCPU(b, procs)-cpu0, machine(b)-busy0
	b.StopTimer()
	rate := float64(n) / elapsed.Seconds()
	b.ReportMetric(rate, "orders/s")
	b.ReportMetric(c.ceiling(), "ceiling-orders/s")
	b.ReportMetric(100*rate/c.ceiling(), "of-ceiling-%")
	b.ReportMetric(float64(n), "orders")
	// Where the cores went: the instances' share, and the whole machine's
	// (PostgreSQL, the broker, and anything else running).
	b.ReportMetric(cpu.Seconds()/elapsed.Seconds(), "instance-cores")
	b.ReportMetric(busy.Seconds()/elapsed.Seconds(), "machine-cores")
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(n), "instance-cpu-ms/order")
	for _, p := range procs {
		p.stop(b)
	}
}

// machine is the CPU time all cores have spent busy so far.
func machine(b *testing.B) time.Duration {
	_, m := testkit.CPU(b)
	return m
}

// clockTick is the unit of CPU times in /proc (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// procsCPU returns the CPU time the processes have used so far.
func procsCPU(t testing.TB, procs []*benchProcess) time.Duration {
	t.Helper()
	var total time.Duration
	for _, p := range procs {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		// Fields after the command name, which is in parentheses: state is
		// the first, utime and stime the 12th and 13th.
		f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
		for _, s := range f[11:13] {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				t.Fatalf("/proc/%d/stat: %v", p.cmd.Process.Pid, err)
			}
			total += time.Duration(n) * clockTick
		}
	}
	return total
}

// confirmedOrders returns n OrderConfirmed events of 1 to 3 units over 20
// SKUs and 100 customers, each order its own key.
func confirmedOrders(n int) []benchEvent {
	customers := make([]string, 100)
	for i := range customers {
		customers[i] = uuid.NewString()
	}
	out := make([]benchEvent, 0, n)
	for i := range n {
		o := benchOrder(customers[i%len(customers)], i)
		o.Status = ordersv1.OrderStatus_ORDER_STATUS_CONFIRMED
		out = append(out, benchEvent{"order", o.OrderId, &ordersv1.OrderConfirmed{Order: o}})
	}
	return out
}

func benchOrder(customer string, i int) *ordersv1.Order {
	qty, price := int64(1+i%3), int64(100+i%7*50)
	return &ordersv1.Order{OrderId: uuid.NewString(), CustomerId: customer,
		Items: []*ordersv1.OrderItem{{Sku: fmt.Sprintf("BENCH-%02d", i%20), Quantity: qty, UnitPrice: usd(price)}}, Total: usd(qty * price)}
}

// benchEvent is one event to publish.
type benchEvent struct {
	aggregateType, key string
	msg                proto.Message
}

// prefill publishes events as the services' relays would (the envelope,
// one partition per key), many in flight at once, and returns once the
// broker has acknowledged them all.
func (h *harness) prefill(t testing.TB, events []benchEvent) {
	t.Helper()
	var acked atomic.Int64
	for _, ev := range events {
		payload, err := proto.Marshal(ev.msg)
		if err != nil {
			t.Fatal(err)
		}
		msg := envelope.Encode("switchyard.", "/switchyard/bench", outbox.Record{
			ID: uuid.New(), AggregateType: ev.aggregateType, AggregateID: ev.key, Type: string(ev.msg.ProtoReflect().Descriptor().FullName()),
			Payload: payload, CreatedAt: time.Now(),
		}, nil)
		if err := h.pub.Publish(context.Background(), msg, func(transport.Delivery) { acked.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	if !h.pub.Flush(5*time.Minute) || acked.Load() != int64(len(events)) {
		select {
		case err := <-h.pub.Failed():
			t.Fatal(err)
		default:
		}
		t.Fatalf("%d of %d events acknowledged", acked.Load(), len(events))
	}
	h.events += len(events)
}

// benchProcess is an analytics instance run as a process of this binary.
type benchProcess struct {
	cmd     *exec.Cmd
	metrics string // its /metrics URL
	log     string // its output
	done    chan struct{}
}

// startProcess starts instance k on h's database and broker with extra
// environment.
func (h *harness) startProcess(t testing.TB, k int, extra map[string]string) *benchProcess {
	t.Helper()
	port, err := pgcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p := &benchProcess{metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", port),
		log: filepath.Join(t.TempDir(), fmt.Sprintf("analytics-%d.log", k)), done: make(chan struct{})}
	out, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(os.Args[0])
	p.cmd.Env = append(os.Environ(), benchInstanceEnv+"=1",
		"SWITCHYARD_DATABASE_URL="+h.db,
		"SWITCHYARD_KAFKA_BROKERS="+h.broker.Addr(),
		"SWITCHYARD_GRPC_ADDR=127.0.0.1:0",
		fmt.Sprintf("SWITCHYARD_METRICS_ADDR=127.0.0.1:%d", port),
		"SWITCHYARD_LOG_FORMAT=text",
		"SWITCHYARD_LOG_LEVEL=warn",
	)
	for k, v := range extra {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = out, out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		out.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *benchProcess) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to analytics: %v", sig, err)
	}
}

// stop ends the instance with SIGTERM and waits for it.
func (p *benchProcess) stop(t testing.TB) {
	t.Helper()
	p.signal(t, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Errorf("analytics did not stop within 30 s; its log: %s", p.log)
	}
}

var lagLine = regexp.MustCompile(`^switchyard_consumer_lag_messages\{[^}]*\}`)
var labelRe = regexp.MustCompile(`(\w+)="([^"]*)"`)

// ownedPartitions returns the partitions of the order topic the instance
// owns in the analytics group, from the lag it exports for them; nil if
// it cannot be read.
func (p *benchProcess) ownedPartitions() []int {
	resp, err := http.Get(p.metrics)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var owned []int
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := lagLine.FindString(sc.Text())
		if m == "" {
			continue
		}
		labels := map[string]string{}
		for _, kv := range labelRe.FindAllStringSubmatch(m, -1) {
			labels[kv[1]] = kv[2]
		}
		if labels["group"] != "analytics" || labels["topic"] != "switchyard.order" {
			continue
		}
		if n, err := strconv.Atoi(labels["partition"]); err == nil {
			owned = append(owned, n)
		}
	}
	return owned
}

// waitSettled waits until the group has split the order topic's
// partitions between the instances, each partition owned by one, every
// instance owning some when there are enough, and the split has stayed
// the same for a second.
func waitSettled(t testing.TB, procs []*benchProcess, partitions int) {
	t.Helper()
	var last string
	var since time.Time
	testkit.WaitFor(t, 2*time.Minute, "the analytics instances to split the partitions", func() bool {
		owners := map[int]int{}
		split, owning := "", 0
		for _, p := range procs {
			owned := p.ownedPartitions()
			if len(owned) > 0 {
				owning++
			}
			for _, n := range owned {
				owners[n]++
			}
			split += fmt.Sprint(owned)
		}
		settled := owning == min(len(procs), partitions)
		for n := range partitions {
			settled = settled && owners[n] == 1
		}
		if !settled {
			last = ""
			return false
		}
		if split != last {
			last, since = split, time.Now()
			return false
		}
		return time.Since(since) >= time.Second
	})
}

// BenchmarkRebuild measures a rebuild: the projections of N events (a
// mix of registrations, confirmed, cancelled and refunded orders, applied
// by the live group first) replayed from the earliest event into new
// tables and swapped in, by one instance. events/s is events applied over
// the rebuild's own start-to-finish time (StartRebuild to the swap's
// commit, so it includes joining the replay group and the rebuilder's
// polls, 100 ms here). Run it with
//
//	go test -run '^$' -bench Rebuild -benchtime 1x ./services/analytics/internal/analytics/
func BenchmarkRebuild(b *testing.B) {
	const n = 50_000
	b.StopTimer()
	h := newHarness(b, nil)
	h.opts = Options{Work: 0, RebuildPoll: 100 * time.Millisecond}
	in := h.start()
	h.prefill(b, rebuildTraffic(n))
	ctx := context.Background()
	testkit.WaitFor(b, 10*time.Minute, "the live group to apply every event", func() bool {
		var applied int
		if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM live.applied`).Scan(&applied); err != nil {
			b.Fatal(err)
		}
		return applied == h.events
	})
	for range b.N {
		b.StartTimer()
		resp, err := in.client.StartRebuild(ctx, &analyticsv1.StartRebuildRequest{})
		if err != nil {
			b.Fatal(err)
		}
		var r *analyticsv1.Rebuild
		testkit.WaitFor(b, 10*time.Minute, "the rebuild to be swapped in", func() bool {
			got, err := in.client.GetRebuild(ctx, &analyticsv1.GetRebuildRequest{RebuildId: resp.GetRebuild().GetRebuildId()})
			if err != nil {
				b.Fatal(err)
			}
			r = got.GetRebuild()
			if r.GetState() == analyticsv1.RebuildState_REBUILD_STATE_FAILED {
				b.Fatalf("rebuild failed: %s", r.GetError())
			}
			return r.GetState() == analyticsv1.RebuildState_REBUILD_STATE_SWAPPED
		})
		b.StopTimer()
		if r.GetEventsApplied() != int64(h.events) {
			b.Fatalf("rebuild applied %d events, want %d", r.GetEventsApplied(), h.events)
		}
		took := r.GetFinishTime().AsTime().Sub(r.GetStartTime().AsTime())
		b.ReportMetric(float64(r.GetEventsApplied())/took.Seconds(), "events/s")
		b.ReportMetric(took.Seconds(), "s/rebuild")
	}
}

// rebuildTraffic returns about n events: one registration per ten orders
// and, of the orders, 80 % confirmed, 20 % cancelled for a failure reason
// and one in 50 confirmed and then refunded.
func rebuildTraffic(n int) []benchEvent {
	reasons := []string{"OUT_OF_STOCK", "UNKNOWN_SKU", "INSUFFICIENT_FUNDS", "TIMEOUT"}
	var customers []string
	out := make([]benchEvent, 0, n)
	for i := 0; len(out) < n; i++ {
		if i%10 == 0 {
			id := uuid.NewString()
			customers = append(customers, id)
			out = append(out, benchEvent{"customer", id, &customersv1.CustomerRegistered{Customer: &customersv1.Customer{CustomerId: id, Email: id[:8] + "@example.com", Name: "B"}}})
		}
		o := benchOrder(customers[i%len(customers)], i)
		if i%5 == 4 {
			o.Status, o.FailureReason = ordersv1.OrderStatus_ORDER_STATUS_CANCELLED, reasons[i%len(reasons)]
			out = append(out, benchEvent{"order", o.OrderId, &ordersv1.OrderCancelled{Order: o}})
			continue
		}
		o.Status = ordersv1.OrderStatus_ORDER_STATUS_CONFIRMED
		out = append(out, benchEvent{"order", o.OrderId, &ordersv1.OrderConfirmed{Order: o}})
		if i%50 == 0 {
			refund := proto.Clone(o).(*ordersv1.Order)
			refund.Status, refund.FailureReason = ordersv1.OrderStatus_ORDER_STATUS_CANCELLED, "CANCELLED_BY_CUSTOMER"
			out = append(out, benchEvent{"order", o.OrderId, &ordersv1.OrderCancelled{Order: refund}})
		}
	}
	return out
}
