package orders

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// sagaMetrics count how sagas end. They are observed when the terminal
// transition is written; in the rare case that its transaction then fails to
// commit, the retried transition is counted again.
type sagaMetrics struct {
	outcomes *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newSagaMetrics() sagaMetrics {
	return sagaMetrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_saga_outcomes_total",
			Help: "Orders that reached a terminal status, by status and failure reason.",
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
