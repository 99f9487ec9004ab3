package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard/switchyard/shop/registry"
)

// cpuSeries is the CPU time of a process, which every service exports
// (Prometheus' process collector).
const cpuSeries = "process_cpu_seconds_total"

// targetName is the service a metrics URL belongs to, by its documented
// metrics port (registry: gRPC port + 1000), else its host:port.
func targetName(target string) string {
	u, err := url.Parse(target)
	if err != nil {
		return target
	}
	for _, svc := range registry.Services {
		if u.Port() == strconv.Itoa(svc.Port+1000) {
			return svc.Name
		}
	}
	return u.Host
}

// cpuSnapshot reads each target's CPU seconds, by targetName; a target
// that does not answer or does not serve cpuSeries is left out.
func cpuSnapshot(ctx context.Context, targets []string) map[string]float64 {
	client := &http.Client{Timeout: 5 * time.Second}
	out := map[string]float64{}
	for _, target := range targets {
		families, err := scrape(ctx, client, target)
		if err != nil {
			continue
		}
		if f, ok := families[cpuSeries]; ok && len(f.GetMetric()) > 0 {
			out[targetName(target)] += f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return out
}

// cpuPerOrder says how many milliseconds of CPU each service spent per
// completed order between two snapshots, most first, and their total.
// Services missing from either snapshot (restarted, or not answering) are
// left out; "" when none is left or no order completed.
func cpuPerOrder(before, after map[string]float64, orders int) string {
	if orders == 0 {
		return ""
	}
	type use struct {
		name string
		ms   float64
	}
	var uses []use
	total := 0.0
	for name, a := range after {
		b, ok := before[name]
		if !ok || a < b {
			continue
		}
		ms := (a - b) * 1000 / float64(orders)
		uses = append(uses, use{name, ms})
		total += ms
	}
	if len(uses) == 0 {
		return ""
	}
	sort.Slice(uses, func(i, j int) bool {
		if uses[i].ms != uses[j].ms {
			return uses[i].ms > uses[j].ms
		}
		return uses[i].name < uses[j].name
	})
	parts := make([]string, len(uses))
	for i, u := range uses {
		parts[i] = fmt.Sprintf("%s %.1f", u.name, u.ms)
	}
	return fmt.Sprintf("%s; total %.1f ms", strings.Join(parts, ", "), total)
}
