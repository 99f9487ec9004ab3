package testkit

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// CPU returns the CPU time this process and the whole machine have used
// so far (the machine's: every core's time not idle or waiting for I/O,
// from /proc/stat), for benchmarks that report what work costs: take it
// before and after, and divide the differences by the work done.
func CPU(t testing.TB) (self, machine time.Duration) {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	// cpu  user nice system idle iowait irq softirq steal guest...: in
	// clock ticks (USER_HZ, 100 per second on Linux); guest time is
	// already counted in user.
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	for i, s := range f[1:min(len(f), 9)] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("/proc/stat: %v", err)
		}
		machine += time.Duration(n) * 10 * time.Millisecond
	}
	return self, machine
}
