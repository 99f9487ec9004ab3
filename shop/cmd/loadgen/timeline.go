package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/switchyard/switchyard/shop/loadplot"
)

// lagSeries is the consumer lag every consumer group exports, per owned
// partition (-1 while unknown): messages not yet received. bufferedSeries
// counts those received and not yet taken by the partition's worker.
const (
	lagSeries      = "switchyard_consumer_lag_messages"
	bufferedSeries = "switchyard_consumer_buffered_messages"
)

// timeline records a run second by second for -plot: the events of second
// k (orders sent, refused, finished, with the latency of those finished) go
// into bucket k, and the consumer lag scraped at second k into sample k.
type timeline struct {
	start time.Time

	mu       sync.Mutex
	sent     []float64
	refused  []float64
	terminal []float64
	latency  [][]time.Duration // CreateOrder -> terminal, by the second the order finished
	lag      map[string][]float64
	scraped  bool // some metrics endpoint answered
	lagSeen  bool // and served lagSeries
}

func newTimeline(start time.Time) *timeline {
	return &timeline{start: start, lag: map[string][]float64{}}
}

// second is the bucket of an instant: whole seconds since the start.
func (t *timeline) second(at time.Time) int { return max(0, int(at.Sub(t.start)/time.Second)) }

// grow makes s long enough to index i; the new slots are fill.
func grow[T any](s []T, i int, fill T) []T {
	for len(s) <= i {
		s = append(s, fill)
	}
	return s
}

// addSent counts a CreateOrder in the second it was sent.
func (t *timeline) addSent(at time.Time) { t.count(&t.sent, at) }

// addRefused counts a refused CreateOrder in the second it was sent.
func (t *timeline) addRefused(sentAt time.Time) { t.count(&t.refused, sentAt) }

// addTerminal counts an order in the second it finished, with its latency.
func (t *timeline) addTerminal(sentAt, doneAt time.Time) {
	t.count(&t.terminal, doneAt)
	t.mu.Lock()
	defer t.mu.Unlock()
	i := t.second(doneAt)
	t.latency = grow(t.latency, i, nil)
	t.latency[i] = append(t.latency[i], doneAt.Sub(sentAt))
}

// count adds one event at the given instant to a per-second series.
func (t *timeline) count(series *[]float64, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := t.second(at)
	*series = grow(*series, i, 0)
	(*series)[i]++
}

// addLag records one scrape of every group's lag.
func (t *timeline) addLag(at time.Time, lag map[string]float64, answered, served bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.scraped = t.scraped || answered
	t.lagSeen = t.lagSeen || served
	// Rounded rather than truncated: the scrape meant for second k may
	// start a few milliseconds before it.
	i := max(0, int(math.Round(at.Sub(t.start).Seconds())))
	for group, v := range lag {
		t.lag[group] = grow(t.lag[group], i, math.NaN())
		t.lag[group][i] = v
	}
}

// scrapeLoop scrapes the consumer lag from every target once a second until
// ctx ends. A target that does not answer is left out of that sample: the
// run goes on without it.
func (t *timeline) scrapeLoop(ctx context.Context, targets []string) {
	client := &http.Client{Timeout: 900 * time.Millisecond}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		at := time.Now()
		lag := map[string]float64{}
		answered, served := false, false
		for _, target := range targets {
			groups, ok, err := scrapeLag(ctx, client, target)
			if err != nil {
				continue
			}
			answered = true
			served = served || ok
			// Each member of a group exports the partitions it owns, so
			// the group's lag is the sum over every process scraped.
			for g, v := range groups {
				lag[g] += v
			}
		}
		t.addLag(at, lag, answered, served)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// scrapeLag reads one /metrics endpoint and sums lagSeries and
// bufferedSeries per group (see lagOf); ok reports whether the endpoint
// serves lagSeries at all.
func scrapeLag(ctx context.Context, client *http.Client, url string) (lag map[string]float64, ok bool, err error) {
	families, err := scrape(ctx, client, url)
	if err != nil {
		return nil, false, err
	}
	lag, ok = lagOf(families)
	return lag, ok, nil
}

// scrape reads one /metrics endpoint.
func scrape(ctx context.Context, client *http.Client, url string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	families, err := parseMetrics(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	return families, nil
}

// parseMetrics reads the Prometheus text format.
func parseMetrics(r io.Reader) (map[string]*dto.MetricFamily, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return families, nil
}

// lagOf sums lagSeries and bufferedSeries per group: the messages a group
// has yet to take. Partitions whose lag is unknown (-1) are left out of
// the sum rather than subtracted from it; a group with none known has no
// value (a gap), buffered messages or not.
func lagOf(families map[string]*dto.MetricFamily) (map[string]float64, bool) {
	family, ok := families[lagSeries]
	lag := map[string]float64{}
	sum := func(family *dto.MetricFamily, knownOnly bool) {
		for _, m := range family.GetMetric() {
			group := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "group" {
					group = l.GetValue()
				}
			}
			if _, known := lag[group]; knownOnly && !known {
				continue
			}
			if v := m.GetGauge().GetValue(); v >= 0 {
				lag[group] += v
			}
		}
	}
	sum(family, false)
	sum(families[bufferedSeries], true)
	return lag, ok
}

// chart turns the recording into the picture's panels.
func (t *timeline) chart(title string) loadplot.Chart {
	t.mu.Lock()
	defer t.mu.Unlock()
	// Every series runs to the last sample, so that the rates drop to zero
	// while the lag of the last orders drains rather than stopping short.
	n := max(len(t.sent), len(t.refused), len(t.terminal), len(t.latency))
	for _, s := range t.lag {
		n = max(n, len(s))
	}
	sent, refused, terminal := grow(t.sent, n-1, 0), grow(t.refused, n-1, 0), grow(t.terminal, n-1, 0)
	var p50, p99 []float64
	for _, ds := range grow(t.latency, n-1, nil) {
		if len(ds) == 0 {
			p50, p99 = append(p50, math.NaN()), append(p99, math.NaN())
			continue
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		p50 = append(p50, ms(quantile(ds, 0.50)))
		p99 = append(p99, ms(quantile(ds, 0.99)))
	}
	lag := loadplot.Panel{Title: "consumer backlog (messages not yet received, or received and not yet taken, per group)"}
	groups := make([]string, 0, len(t.lag))
	for g := range t.lag {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	for _, g := range groups {
		lag.Series = append(lag.Series, loadplot.Series{Name: g, Values: t.lag[g]})
	}
	switch {
	case !t.scraped:
		lag.Note = "no metrics endpoint answered"
	case !t.lagSeen:
		lag.Note = lagSeries + " not served"
	}
	return loadplot.Chart{
		Title:  title,
		XLabel: "seconds since the first CreateOrder",
		Panels: []loadplot.Panel{
			{Title: "orders per second", Series: []loadplot.Series{
				{Name: "CreateOrder sent", Values: sent},
				{Name: "refused (RESOURCE_EXHAUSTED)", Values: refused},
				{Name: "reached a terminal status", Values: terminal},
			}},
			{Title: "CreateOrder → terminal latency (ms), of the orders finishing in that second", Series: []loadplot.Series{
				{Name: "p50", Values: p50},
				{Name: "p99", Values: p99},
			}},
			lag,
		},
	}
}

// quantile of sorted durations, the same nearest-rank rule as percentiles.
func quantile(sorted []time.Duration, q float64) time.Duration {
	return sorted[int(q*float64(len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// writePlot writes the picture to path.
func (t *timeline) writePlot(path, title string) error {
	if err := os.WriteFile(path, loadplot.SVG(t.chart(title)), 0o644); err != nil {
		return fmt.Errorf("write plot: %w", err)
	}
	return nil
}

// metricsTargets turns -metrics (comma-separated host:port) into URLs.
func metricsTargets(list string) []string {
	var out []string
	for _, a := range strings.Split(list, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, "http://"+a+"/metrics")
		}
	}
	return out
}

// plotTail is how long -plot keeps scraping after the last order finished:
// the consumers still apply the events that follow a terminal status
// (notifications, stock commits), and the picture shows that lag draining.
const plotTail = 3 * time.Second

// summary is the outcomes in a few words, for the picture's title:
// "1480 confirmed, 20 cancelled TIMEOUT, 3000 refused".
func summary(outcomes map[string]int) string {
	counts := map[string]int{}
	for k, n := range outcomes {
		switch {
		case strings.HasPrefix(k, "ORDER_STATUS_"):
			status, reason, _ := strings.Cut(strings.TrimPrefix(k, "ORDER_STATUS_"), " ")
			k = strings.TrimSpace(strings.ToLower(status) + " " + reason)
		case strings.HasPrefix(k, "refused"):
			k = "refused"
		default: // CreateOrder or watch errors; the printed outcomes say which
			k = "failed"
		}
		counts[k] += n
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d %s", counts[k], k)
	}
	return strings.Join(parts, ", ")
}
