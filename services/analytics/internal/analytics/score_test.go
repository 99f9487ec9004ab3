package analytics

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestScoreValue(t *testing.T) {
	one := []Line{{SKU: "A", Units: 1}}
	tests := []struct {
		name  string
		lines []Line
		total int64
		want  int32
	}{
		{"nothing", nil, 0, 0},
		{"1 USD, one SKU", one, 100, 410},
		{"100 USD, one SKU", one, 10_000, 810},
		{"capped at 1000", one, 1 << 60, 1000},
		{"three SKUs add 30", []Line{{SKU: "A"}, {SKU: "B"}, {SKU: "C"}, {SKU: "A"}}, 100, 430},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := scoreValue(tt.lines, tt.total); got != tt.want {
				t.Errorf("scoreValue = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestOptionsFromEnv(t *testing.T) {
	tests := []struct {
		name     string
		work     string
		kind     string
		want     time.Duration
		wantKind WorkKind
		wantErr  string // a part of the error, "" for none
	}{
		{"defaults", "", "", DefaultWork, WorkCPU, ""},
		{"work", "5ms", "", 5 * time.Millisecond, WorkCPU, ""},
		{"no work", "0", "", 0, WorkCPU, ""},
		{"negative work", "-1ms", "", 0, "", "SWITCHYARD_ANALYTICS_WORK="},
		{"work not a duration", "fast", "", 0, "", "SWITCHYARD_ANALYTICS_WORK="},
		{"cpu", "", "cpu", DefaultWork, WorkCPU, ""},
		{"wait", "30ms", "wait", 30 * time.Millisecond, WorkWait, ""},
		{"unknown kind", "", "sleep", 0, "", `SWITCHYARD_ANALYTICS_WORK_KIND: "sleep" is not a kind of work`},
		{"kind in capitals", "", "CPU", 0, "", "SWITCHYARD_ANALYTICS_WORK_KIND"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"SWITCHYARD_ANALYTICS_WORK": tt.work, "SWITCHYARD_ANALYTICS_WORK_KIND": tt.kind}
			o, err := OptionsFromEnv(func(k string) string { return env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.Work != tt.want || o.WorkKind != tt.wantKind {
				t.Errorf("Work, WorkKind = %v, %q; want %v, %q", o.Work, o.WorkKind, tt.want, tt.wantKind)
			}
		})
	}
}

// Both kinds of work take about the configured time; only CPU work
// spends it on the CPU.
func TestScoreWorkKinds(t *testing.T) {
	const work = 50 * time.Millisecond
	tests := []struct {
		kind   WorkKind
		minCPU bool // whether the process's CPU time must grow by most of work
	}{
		{WorkCPU, true},
		{WorkWait, false},
	}
	lines := []Line{{SKU: "A", Units: 1, RevenueMin: 100}}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			cpu0, start := cpuTime(t), time.Now()
			got := Score(lines, 100, tt.kind, work)
			wall, cpu := time.Since(start), cpuTime(t)-cpu0
			if want := scoreValue(lines, 100); got != want {
				t.Errorf("score = %d, want %d", got, want)
			}
			if wall < work/2 {
				t.Errorf("took %v, want about %v", wall, work)
			}
			if tt.minCPU != (cpu >= work/2) {
				t.Errorf("CPU time %v for %v of %s work", cpu, work, tt.kind)
			}
		})
	}
}

// cpuTime is the CPU time the process has used.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// The memo keeps the last size scores and forgets the oldest first.
func TestScoreMemo(t *testing.T) {
	t.Parallel()
	m := newScoreMemo(3)
	for i, id := range []string{"a", "b", "c", "a", "d"} { // "a" again: kept once, not refreshed
		m.put(id, int32(i))
	}
	for _, c := range []struct {
		id    string
		score int32
		ok    bool
	}{{"a", 0, false}, {"b", 1, true}, {"c", 2, true}, {"d", 4, true}} {
		if s, ok := m.get(c.id); ok != c.ok || (ok && s != c.score) {
			t.Errorf("get(%q) = %d, %v; want %d, %v", c.id, s, ok, c.score, c.ok)
		}
	}
}
