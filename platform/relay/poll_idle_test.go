package relay

import (
	"testing"
	"time"
)

// After published events the poll relay looks again within a millisecond,
// then backs off to PollInterval while the table stays empty.
func TestPollIdleBackoff(t *testing.T) {
	t.Parallel()
	max := 100 * time.Millisecond
	var got []time.Duration
	idle := time.Duration(0)
	for i := 0; i < 9; i++ {
		idle = nextIdle(idle, max)
		got = append(got, idle)
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 64, 100, 100}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("pauses %v, want %v ms", got, want)
		}
	}
	if d := nextIdle(0, 500*time.Microsecond); d != 500*time.Microsecond {
		t.Fatalf("first pause %v with a 500µs interval, want 500µs", d)
	}
}
