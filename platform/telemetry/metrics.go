package telemetry

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"

	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/relay"
	"github.com/switchyard/switchyard/platform/watch"
)

// Metrics is a process's Prometheus registry with the platform's series.
// Services register their own collectors on Registry.
type Metrics struct {
	// Registry holds every series the process serves on /metrics.
	Registry *prometheus.Registry

	rpcs        *prometheus.CounterVec
	rpcDuration *prometheus.HistogramVec
	lag         *lagCollector
	db          *roundTrips
}

// NewMetrics returns a registry with Go runtime, process and gRPC series.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		rpcs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_grpc_requests_total", Help: "gRPC requests handled, by method and status code.",
		}, []string{"method", "code"}),
		rpcDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "switchyard_grpc_request_duration_seconds", Help: "gRPC request latency (streams: their whole life), by method.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}, []string{"method"}),
		lag: &lagCollector{consumers: map[*consumer.Consumer]bool{}},
		db: &roundTrips{total: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_db_round_trips_total",
			Help: "Round trips to PostgreSQL through the service's pools: one per statement sent alone (BEGIN and COMMIT included), one per batch or COPY.",
		})},
	}
	m.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), m.rpcs, m.rpcDuration, m.lag, m.db.total)
	return m
}

// ObserveRPC records one finished RPC.
func (m *Metrics) ObserveRPC(fullMethod string, code codes.Code, d time.Duration) {
	method := ShortMethod(fullMethod)
	m.rpcs.WithLabelValues(method, code.String()).Inc()
	m.rpcDuration.WithLabelValues(method).Observe(d.Seconds())
}

// RegisterRelay exposes a relay's counters and lag. slot is its replication
// slot (cdc) whose retained WAL is reported in bytes; empty in poll mode.
func (m *Metrics) RegisterRelay(r *relay.Relay, pool *pgxpool.Pool, slot string) {
	m.Registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "switchyard_relay_events_published_total",
			Help: "Outbox events Kafka acknowledged."}, func() float64 { return float64(r.Stats().Published) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "switchyard_relay_failures_total",
			Help: "Relay terms that ended in an error (publishing failed, database or broker lost) and were retried."},
			func() float64 { return float64(r.Stats().Failures) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "switchyard_relay_invisible_waits_total",
			Help: "Transactions (cdc) read from the write-ahead log before PostgreSQL made them visible, held back until it did."},
			func() float64 { return float64(r.Stats().InvisibleWaits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "switchyard_relay_invisible_wait_seconds_total",
			Help: "Time those transactions were held back, in all: divided by switchyard_relay_invisible_waits_total, the latency a hold adds."},
			func() float64 { return r.Stats().InvisibleWaitTime.Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_relay_active",
			Help: "1 while this process is the database's active relay, 0 while it stands by."}, func() float64 {
			if r.Stats().Active {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_relay_stuck",
			Help: "1 while the relay cannot publish (failing, or no acknowledgement) for longer than its StuckAfter; the log says why."},
			func() float64 {
				if r.Stats().Stuck {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_relay_oldest_unpublished_age_seconds",
			Help: "Age of the oldest event read from the outbox but not yet acknowledged by Kafka (0 when none)."},
			func() float64 { return r.Stats().OldestPendingAge.Seconds() }),
	)
	if slot != "" {
		m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_relay_slot_lag_bytes",
			Help: "WAL the replication slot retains beyond what the relay confirmed (-1 if unknown)."}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			var lag *float64
			err := pool.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8
				FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&lag)
			if err != nil || lag == nil {
				return -1
			}
			return *lag
		}))
	}
}

// RegisterConsumer exposes a consumer's counters and its lag, labelled
// with its group so that a process can run several.
func (m *Metrics) RegisterConsumer(c *consumer.Consumer) {
	group := prometheus.Labels{"group": c.Group()}
	counter := func(name, help string, v func(consumer.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: group}, func() float64 { return float64(v(c.Stats())) })
	}
	m.Registry.MustRegister(
		counter("switchyard_consumer_events_processed_total", "Events whose handler committed.", func(s consumer.Stats) uint64 { return s.Processed }),
		counter("switchyard_consumer_duplicates_skipped_total", "Redelivered events skipped thanks to the inbox.", func(s consumer.Stats) uint64 { return s.Duplicates }),
		counter("switchyard_consumer_retries_total", "Handler attempts after a failure.", func(s consumer.Stats) uint64 { return s.Retries }),
		counter("switchyard_consumer_dead_lettered_total", "Messages sent to a dead-letter topic.", func(s consumer.Stats) uint64 { return s.DeadLettered }),
		counter("switchyard_consumer_events_skipped_total", "Events of a type no handler is registered for.", func(s consumer.Stats) uint64 { return s.Skipped }),
		counter("switchyard_consumer_events_held_total", "Waits on events of a type this build does not know.", func(s consumer.Stats) uint64 { return s.Held }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_consumer_partitions", Help: "Partitions this member of the group owns.", ConstLabels: group},
			func() float64 { return float64(c.Stats().Partitions) }),
	)
	m.TrackLag(c)
}

// TrackLag adds a consumer's partitions to switchyard_consumer_lag_messages
// and switchyard_consumer_buffered_messages (labelled with its group) until
// the returned function is called: a process may run consumers of several
// groups, for example a replay's beside its main one, and each group's lag
// is exported.
func (m *Metrics) TrackLag(c *consumer.Consumer) (untrack func()) {
	m.lag.mu.Lock()
	m.lag.consumers[c] = true
	m.lag.mu.Unlock()
	return func() {
		m.lag.mu.Lock()
		delete(m.lag.consumers, c)
		m.lag.mu.Unlock()
	}
}

var (
	lagDesc = prometheus.NewDesc("switchyard_consumer_lag_messages",
		"Messages of an owned partition not yet received by the member, as the transport last saw them (Kafka: as of the last fetch response, or of the pause while its buffer is full); -1 when unknown.",
		[]string{"group", "topic", "partition"}, nil)
	bufferedDesc = prometheus.NewDesc("switchyard_consumer_buffered_messages",
		"Messages of an owned partition received by the member and waiting for its worker.",
		[]string{"group", "topic", "partition"}, nil)
)

// lagCollector reads each owned partition's lag at scrape time, for every
// consumer tracked.
type lagCollector struct {
	mu        sync.Mutex
	consumers map[*consumer.Consumer]bool
}

func (l *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- lagDesc; ch <- bufferedDesc }

func (l *lagCollector) Collect(ch chan<- prometheus.Metric) {
	l.mu.Lock()
	cs := make([]*consumer.Consumer, 0, len(l.consumers))
	for c := range l.consumers {
		cs = append(cs, c)
	}
	l.mu.Unlock()
	for _, c := range cs {
		for _, p := range c.Lag() {
			partition := strconv.Itoa(int(p.Partition))
			ch <- prometheus.MustNewConstMetric(lagDesc, prometheus.GaugeValue, float64(p.Messages), c.Group(), p.Topic, partition)
			ch <- prometheus.MustNewConstMetric(bufferedDesc, prometheus.GaugeValue, float64(p.Buffered), c.Group(), p.Topic, partition)
		}
	}
}

// RegisterWatch exports the watch streams' bound: how many streams follow
// now and how many were refused.
func (m *Metrics) RegisterWatch(l *watch.Limit) {
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_watch_streams",
			Help: "Watch streams following now."}, func() float64 { return float64(l.Active()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "switchyard_watch_streams_rejected_total",
			Help: "Watch streams refused with RESOURCE_EXHAUSTED (SWITCHYARD_WATCH_MAX_STREAMS reached)."}, func() float64 { return float64(l.Rejected()) }),
	)
}

// Serve serves /metrics on addr until ctx ends.
func (m *Metrics) Serve(ctx context.Context, lis net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
