package watch

import "time"

// Idle reports whether the hub has written its record of followed keys,
// so that a test sees only the wake-ups it causes.
func (h *Hub) Idle() bool { return h.interest.idle() }

// SetSteadyAfter sets how long a LISTEN connection must last for the
// reconnect pause to start over; call it before Run.
func (h *Hub) SetSteadyAfter(d time.Duration) { h.steadyAfter = d }
