package watch

// Idle reports whether the hub has written its record of followed keys and
// delivered every wake-up it owes, so that a test sees only the wake-ups
// it causes.
func (h *Hub) Idle() bool { return h.interest.idle() }
