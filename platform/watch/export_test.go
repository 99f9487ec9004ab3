package watch

// Idle reports whether the hub has written its record of followed keys,
// so that a test sees only the wake-ups it causes.
func (h *Hub) Idle() bool { return h.interest.idle() }
