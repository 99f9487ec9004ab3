package watch

import "time"

// Idle reports whether the hub has written its record of followed keys and
// delivered every wake-up it owes, so that a test sees only the wake-ups
// it causes.
func (h *Hub) Idle() bool { return h.interest.idle() }

// SetCatchUpWait replaces how long the hub waits for running transactions
// before it wakes new streams anyway, so that a test can tell a catch-up
// from that fallback.
func (h *Hub) SetCatchUpWait(d time.Duration) {
	h.interest.mu.Lock()
	defer h.interest.mu.Unlock()
	h.interest.wait = d
}
