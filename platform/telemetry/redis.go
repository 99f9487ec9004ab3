package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/platform/redisstream"
)

var (
	redisPendingDesc = prometheus.NewDesc("switchyard_redis_pending_entries",
		"Entries delivered to a consumer group on a partition stream and not yet acknowledged.",
		[]string{"group", "stream"}, nil)
	redisGroupLagDesc = prometheus.NewDesc("switchyard_redis_group_lag_entries",
		"Entries of a partition stream not yet delivered to a consumer group (-1 when Redis cannot tell).",
		[]string{"group", "stream"}, nil)
	redisStalledDesc = prometheus.NewDesc("switchyard_redis_stalled_groups",
		"Consumer group and stream pairs with work that have not advanced for the stall period; they hold back trimming.",
		nil, nil)
	redisTrimmedDesc = prometheus.NewDesc("switchyard_redis_trimmed_entries_total",
		"Entries removed by trimming (only entries every group has processed, older than the retention).",
		nil, nil)
	redisDroppedDesc = prometheus.NewDesc("switchyard_redis_dropped_pending_total",
		"Pending entries whose message was already trimmed: acknowledged and skipped.",
		nil, nil)
)

// RegisterRedis exposes the Redis Streams transport's view of its streams,
// as of its last maintenance pass.
func (m *Metrics) RegisterRedis(t *redisstream.Transport) {
	m.Registry.MustRegister(redisCollector{t})
}

type redisCollector struct{ t *redisstream.Transport }

func (c redisCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{redisPendingDesc, redisGroupLagDesc, redisStalledDesc, redisTrimmedDesc, redisDroppedDesc} {
		ch <- d
	}
}

func (c redisCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.t.Stats()
	for _, g := range s.Groups {
		ch <- prometheus.MustNewConstMetric(redisPendingDesc, prometheus.GaugeValue, float64(g.Pending), g.Group, g.Stream)
		ch <- prometheus.MustNewConstMetric(redisGroupLagDesc, prometheus.GaugeValue, float64(g.Lag), g.Group, g.Stream)
	}
	ch <- prometheus.MustNewConstMetric(redisStalledDesc, prometheus.GaugeValue, float64(s.StalledGroups))
	ch <- prometheus.MustNewConstMetric(redisTrimmedDesc, prometheus.CounterValue, float64(s.TrimmedEntries))
	ch <- prometheus.MustNewConstMetric(redisDroppedDesc, prometheus.CounterValue, float64(s.DroppedPending))
}
