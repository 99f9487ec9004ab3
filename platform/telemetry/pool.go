package telemetry

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// RegisterPool exports pool's connections, and how often and how long
// work waited for one, labelled pool=name: a pool that is too small for
// its load shows as waits, where otherwise only latency would.
func (m *Metrics) RegisterPool(name string, pool *pgxpool.Pool) {
	m.Registry.MustRegister(newPoolCollector(name, pool))
}

type poolCollector struct {
	pool                                  *pgxpool.Pool
	conns, max, acquires, waits, waitTime *prometheus.Desc
}

func newPoolCollector(name string, pool *pgxpool.Pool) *poolCollector {
	labels := prometheus.Labels{"pool": name}
	return &poolCollector{
		pool: pool,
		conns: prometheus.NewDesc("switchyard_db_pool_connections",
			"Connections of the pool, by state: in_use (acquired), idle, or being opened.", []string{"state"}, labels),
		max: prometheus.NewDesc("switchyard_db_pool_max_connections",
			"The most connections the pool opens.", nil, labels),
		acquires: prometheus.NewDesc("switchyard_db_pool_acquires_total",
			"Connections acquired from the pool.", nil, labels),
		waits: prometheus.NewDesc("switchyard_db_pool_waits_total",
			"Acquires that found no idle connection and waited for one to be released or opened.", nil, labels),
		waitTime: prometheus.NewDesc("switchyard_db_pool_wait_seconds_total",
			"Time those acquires waited, in all: divided by switchyard_db_pool_waits_total, what a wait costs.", nil, labels),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.conns
	ch <- c.max
	ch <- c.acquires
	ch <- c.waits
	ch <- c.waitTime
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s.AcquiredConns()), "in_use")
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s.ConstructingConns()), "opening")
	ch <- prometheus.MustNewConstMetric(c.max, prometheus.GaugeValue, float64(s.MaxConns()))
	ch <- prometheus.MustNewConstMetric(c.acquires, prometheus.CounterValue, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(c.waits, prometheus.CounterValue, float64(s.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(c.waitTime, prometheus.CounterValue, s.EmptyAcquireWaitTime().Seconds())
}
