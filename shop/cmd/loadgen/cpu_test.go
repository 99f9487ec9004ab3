package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

// CPU per order: each service's CPU seconds between the snapshots, in
// milliseconds per completed order, most first; services missing from a
// snapshot or restarted in between (their counter went down) are left out.
func TestCPUPerOrder(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		before, after map[string]float64
		orders        int
		want          string
	}{
		{"two services", map[string]float64{"orders": 10, "inventory": 5}, map[string]float64{"orders": 12.2, "inventory": 6.5}, 1000,
			"orders 2.2, inventory 1.5; total 3.7 ms"},
		{"missing before", map[string]float64{"orders": 10}, map[string]float64{"orders": 11, "payments": 3}, 1000,
			"orders 1.0; total 1.0 ms"},
		{"restarted", map[string]float64{"orders": 10, "payments": 9}, map[string]float64{"orders": 11, "payments": 1}, 1000,
			"orders 1.0; total 1.0 ms"},
		{"no orders", map[string]float64{"orders": 10}, map[string]float64{"orders": 11}, 0, ""},
		{"no services", nil, nil, 100, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := cpuPerOrder(tc.before, tc.after, tc.orders); got != tc.want {
				t.Fatalf("cpuPerOrder = %q, want %q", got, tc.want)
			}
		})
	}
}

// A snapshot reads process_cpu_seconds_total from every endpoint that
// answers, named by the documented metrics port, else host:port.
func TestCPUSnapshot(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 4.25\n")
	}))
	defer srv.Close()
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	got := cpuSnapshot(context.Background(), []string{srv.URL + "/metrics", dead.URL + "/metrics"})
	host := srv.Listener.Addr().String()
	if len(got) != 1 || got[host] != 4.25 {
		t.Fatalf("snapshot %v, want only %s at 4.25", got, host)
	}
	if name := targetName("http://127.0.0.1:51052/metrics"); name != "orders" {
		t.Fatalf("targetName of orders' metrics port = %q", name)
	}
}
