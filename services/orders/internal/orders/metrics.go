package orders

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// sagaMetrics count how sagas end, once the transaction that ended one has
// committed (see server.committed): a consumer batch that rolls back and is
// applied again one event at a time counts each ending once. An ending is
// not counted if the process stops between its commit and the count.
type sagaMetrics struct {
	outcomes *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newSagaMetrics() sagaMetrics {
	return sagaMetrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_saga_outcomes_total",
			Help: "Sagas that ended, by status and failure reason (a confirmed order cancelled later is not counted again).",
		}, []string{"status", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchyard_saga_duration_seconds",
			Help:    "Time from CreateOrder to the terminal status, by status.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}, []string{"status"}),
	}
}

func (m sagaMetrics) observe(status, reason string, d time.Duration) {
	m.outcomes.WithLabelValues(status, reason).Inc()
	m.duration.WithLabelValues(status).Observe(d.Seconds())
}
