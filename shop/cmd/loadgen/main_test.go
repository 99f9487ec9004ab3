package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/platform/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// Flags that would send no order, or that the ticker cannot run, are
// refused in one line naming what to change, rather than a panic or an
// empty run.
func TestCheckFlags(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rate     int
		duration time.Duration
		want     string // "" accepts
	}{
		{"the defaults", 50, 20 * time.Second, ""},
		{"one order", 50, 20 * time.Millisecond, ""},
		{"a third of a second at 3/s", 3, time.Second/3 + 1, ""},
		{"RATE=0", 0, 20 * time.Second, "-rate (RATE=) is CreateOrder calls per second, from 1 to 1000000, not 0"},
		{"a negative rate", -5, 20 * time.Second, "not -5"},
		{"a rate the ticker cannot keep", 2_000_000_000, time.Second, "not 2000000000"},
		{"too short for one order", 50, 500 * time.Microsecond, "-duration (DURATION=) 500µs at 50 orders/s sends no order: make it at least 20ms"},
		{"just short of one order at 3/s", 3, time.Second / 3, "make it at least 333.333334ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkFlags(tc.rate, tc.duration, 20, 1)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("checkFlags = %v, want it accepted", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("checkFlags = %v, want %q", err, tc.want)
			}
		})
	}
}

// The orders sent are rate times the duration, fractions of a second
// included.
func TestOrderCount(t *testing.T) {
	for _, tc := range []struct {
		rate     int
		duration time.Duration
		want     int
	}{
		{50, 20 * time.Second, 1000},
		{50, 1900 * time.Millisecond, 95},
		{50, 500 * time.Millisecond, 25},
		{50, 19 * time.Millisecond, 0},
		{3, time.Second/3 + 1, 1},
		{1_000_000, 3 * time.Hour, 10_800_000_000},
	} {
		if got := orderCount(tc.rate, tc.duration); got != tc.want {
			t.Errorf("orderCount(%d, %s) = %d, want %d", tc.rate, tc.duration, got, tc.want)
		}
	}
}

// With no order at a terminal status there is no rate to print.
func TestThroughput(t *testing.T) {
	for _, tc := range []struct {
		n       int
		elapsed time.Duration
		want    string
	}{
		{1000, 20 * time.Second, "throughput: 50.0 orders/s reached a terminal status (1000 in 20s)"},
		{0, -time.Hour, "throughput: no order reached a terminal status"},
	} {
		if got := throughput(tc.n, tc.elapsed); got != tc.want {
			t.Errorf("throughput(%d, %s) = %q, want %q", tc.n, tc.elapsed, got, tc.want)
		}
	}
}

// pgbench runs its script on a real cluster and leaves no file behind.
func TestPgbench(t *testing.T) {
	url := testkit.Database(t)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	tps, err := pgbench(context.Background(), url, 2, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if tps <= 0 {
		t.Errorf("pgbench: %v tps, want some", tps)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("left in TMPDIR: %v", left)
	}
}
