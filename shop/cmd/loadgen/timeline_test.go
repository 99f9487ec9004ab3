package main

import (
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLagOf(t *testing.T) {
	for _, tc := range []struct {
		name   string
		body   string
		want   map[string]float64
		served bool
	}{
		{
			name: "summed per group over topics and partitions",
			body: `# HELP switchyard_consumer_lag_messages Messages of an owned partition not yet delivered.
# TYPE switchyard_consumer_lag_messages gauge
switchyard_consumer_lag_messages{group="inventory",partition="0",topic="switchyard.order"} 3
switchyard_consumer_lag_messages{group="inventory",partition="1",topic="switchyard.order"} 4
switchyard_consumer_lag_messages{group="inventory-cache",partition="0",topic="switchyard.product"} 0
switchyard_relay_active 1
`,
			want: map[string]float64{"inventory": 7, "inventory-cache": 0}, served: true,
		},
		{
			name: "unknown partitions left out, a group with none known has no value",
			body: `# TYPE switchyard_consumer_lag_messages gauge
switchyard_consumer_lag_messages{group="orders",partition="0",topic="switchyard.payment"} -1
switchyard_consumer_lag_messages{group="orders",partition="1",topic="switchyard.payment"} 2
switchyard_consumer_lag_messages{group="payments",partition="0",topic="switchyard.order"} -1
`,
			want: map[string]float64{"orders": 2}, served: true,
		},
		{
			name: "buffered messages added to their group's lag, not to a group whose lag is unknown",
			body: `# TYPE switchyard_consumer_lag_messages gauge
switchyard_consumer_lag_messages{group="orders",partition="0",topic="switchyard.payment"} 2
switchyard_consumer_lag_messages{group="payments",partition="0",topic="switchyard.order"} -1
# TYPE switchyard_consumer_buffered_messages gauge
switchyard_consumer_buffered_messages{group="orders",partition="0",topic="switchyard.payment"} 40
switchyard_consumer_buffered_messages{group="orders",partition="1",topic="switchyard.payment"} 3
switchyard_consumer_buffered_messages{group="payments",partition="0",topic="switchyard.order"} 7
`,
			want: map[string]float64{"orders": 45}, served: true,
		},
		{
			name: "a build without the series",
			body: "# TYPE switchyard_relay_active gauge\nswitchyard_relay_active 1\n",
			want: map[string]float64{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			families, err := parseMetrics(strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			got, served := lagOf(families)
			if !maps.Equal(got, tc.want) || served != tc.served {
				t.Errorf("lagOf = %v, %v, want %v, %v", got, served, tc.want, tc.served)
			}
		})
	}
}

// Events land in the bucket of their second; latency percentiles are those
// of the orders finishing in that second; every series runs to the last
// lag sample.
func TestTimelineChart(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return start.Add(time.Duration(ms) * time.Millisecond) }
	tl := newTimeline(start)
	tl.addSent(at(0))
	tl.addSent(at(500))
	tl.addSent(at(1200))
	tl.addRefused(at(1200))
	tl.addTerminal(at(0), at(100))    // second 0, 100 ms
	tl.addTerminal(at(500), at(1400)) // second 1, 900 ms
	for i := range 4 {
		tl.addLag(at(i*1000-3), map[string]float64{"orders": float64(10 - i)}, true, true)
	}
	c := tl.chart("title")

	nan := math.NaN()
	want := map[string][]float64{
		"CreateOrder sent":             {2, 1, 0, 0},
		"refused (RESOURCE_EXHAUSTED)": {0, 1, 0, 0},
		"reached a terminal status":    {1, 1, 0, 0},
		"p50":                          {100, 900, nan, nan},
		"p99":                          {100, 900, nan, nan},
		"orders":                       {10, 9, 8, 7},
	}
	got := map[string][]float64{}
	for _, p := range c.Panels {
		if p.Note != "" {
			t.Errorf("panel %q has note %q", p.Title, p.Note)
		}
		for _, s := range p.Series {
			got[s.Name] = s.Values
		}
	}
	eq := func(a, b float64) bool { return a == b || math.IsNaN(a) && math.IsNaN(b) }
	for name, w := range want {
		if g, ok := got[name]; !ok || len(g) != len(w) || !slices.EqualFunc(g, w, eq) {
			t.Errorf("%s = %v, want %v", name, g, w)
		}
	}
}

// The legend says why the lag panel is empty.
func TestTimelineLagNote(t *testing.T) {
	for _, tc := range []struct {
		name             string
		answered, served bool
		note             string
	}{
		{name: "no endpoint", note: "no metrics endpoint answered"},
		{name: "no series", answered: true, note: lagSeries + " not served"},
		{name: "served", answered: true, served: true, note: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tl := newTimeline(time.Time{})
			tl.addLag(time.Time{}, map[string]float64{}, tc.answered, tc.served)
			if got := tl.chart("").Panels[2].Note; got != tc.note {
				t.Errorf("note = %q, want %q", got, tc.note)
			}
		})
	}
}

func TestSummary(t *testing.T) {
	got := summary(map[string]int{
		"ORDER_STATUS_CONFIRMED ":                       1480,
		"ORDER_STATUS_CANCELLED TIMEOUT":                20,
		"refused (RESOURCE_EXHAUSTED, nothing written)": 3000,
		"watch error: rpc error: code = Unavailable":    2,
		"CreateOrder error: rpc error: code = Internal": 1,
	})
	if want := "20 cancelled TIMEOUT, 1480 confirmed, 3 failed, 3000 refused"; got != want {
		t.Errorf("summary = %q, want %q", got, want)
	}
}
