package analytics

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"sync"
	"time"
)

// WorkKind is what the scoring step spends its time on. The two kinds
// scale differently: CPU work is bounded by the cores of the machines the
// instances run on, waiting by how many orders are scored at once (one
// per partition), so the benchmarks measure both.
type WorkKind string

// Kinds of work.
const (
	// WorkCPU is real CPU work, standing in for a model evaluated in
	// process (the default).
	WorkCPU WorkKind = "cpu"
	// WorkWait is a pause of the same duration, standing in for a call to
	// an external scoring service: the instance's CPU is idle meanwhile.
	WorkWait WorkKind = "wait"
)

// ParseWorkKind parses "cpu" or "wait".
func ParseWorkKind(s string) (WorkKind, error) {
	switch k := WorkKind(s); k {
	case WorkCPU, WorkWait:
		return k, nil
	}
	return "", fmt.Errorf("%q is not a kind of work: want %q (CPU work) or %q (a wait, as for an external call)", s, WorkCPU, WorkWait)
}

// Score is the heavy per-order step. Its value is a deterministic function
// of the order (so a redelivery or another instance would compute the
// same); its cost is work of the given kind: CPU work, a hash chain as long
// as the configured duration of work takes on this machine, standing in
// for a model that takes that long to evaluate, or a wait as long,
// standing in for a call to a service that does.
func Score(lines []Line, totalMinor int64, kind WorkKind, work time.Duration) int32 {
	if kind == WorkWait {
		time.Sleep(work)
	} else {
		burn(work)
	}
	return scoreValue(lines, totalMinor)
}

// scoreValue is 0..1000: mostly the order's value on a log scale (1 USD
// scores about 200, 10,000 USD 1000), plus a little for variety of lines.
func scoreValue(lines []Line, totalMinor int64) int32 {
	if totalMinor <= 0 {
		return 0
	}
	v := 200 * math.Log10(float64(totalMinor))
	skus := map[string]bool{}
	for _, l := range lines {
		skus[l.SKU] = true
	}
	v += 10 * float64(min(len(skus), 10))
	return int32(min(1000, max(0, math.Round(v))))
}

// hashesPerMillisecond is how many chain steps this machine does per
// millisecond of CPU, measured once on the CPU time of the measuring
// thread: measured on the wall clock, a probe that shares the cores with
// a busy start (other processes, the rest of this one) counts fewer steps,
// and every order's work would be that much smaller for the life of the
// process.
var hashesPerMillisecond = sync.OnceValue(func() float64 {
	const probe = 20 * time.Millisecond
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	spent := cpuClock()
	var sum [32]byte
	n := 0
	for spent() < probe {
		for range 256 {
			sum = sha256.Sum256(sum[:])
		}
		n += 256
	}
	_ = sum
	return float64(n) / (float64(spent()) / float64(time.Millisecond))
})

// cpuClock returns a function that tells the CPU time the calling thread
// has used since cpuClock was called, or the wall time where the thread's
// CPU time cannot be read. The caller keeps to its thread.
func cpuClock() func() time.Duration {
	if start, ok := threadCPU(); ok {
		return func() time.Duration {
			now, _ := threadCPU()
			return now - start
		}
	}
	start := time.Now()
	return func() time.Duration { return time.Since(start) }
}

// burn spends about work of CPU: a fixed number of hash steps, calibrated
// once, so that the work per order is the same however busy the machine
// is (a busy machine takes longer in wall time, as real work would).
func burn(work time.Duration) {
	if work <= 0 {
		return
	}
	steps := int(hashesPerMillisecond() * float64(work) / float64(time.Millisecond))
	var sum [32]byte
	binary.LittleEndian.PutUint64(sum[:], uint64(steps))
	for range steps {
		sum = sha256.Sum256(sum[:])
	}
	_ = sum
}

// scoreMemoSize bounds the scores an instance remembers: several batches'
// worth on every partition it may own.
const scoreMemoSize = 8192

// scoreMemo remembers the scores this instance computed lately. A batch
// that rolls back (a poison event among its orders, a conflict, a
// transient failure) is applied again, one event at a time or whole, and
// without it every order's work would be done again; the score is a
// function of the order alone, so the one remembered is the one the work
// would give. It forgets the oldest first.
type scoreMemo struct {
	mu     sync.Mutex
	scores map[string]int32
	ring   []string // the keys, oldest at next once full
	next   int
}

func newScoreMemo(size int) *scoreMemo {
	return &scoreMemo{scores: make(map[string]int32, size), ring: make([]string, 0, size)}
}

func (m *scoreMemo) get(orderID string) (int32, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.scores[orderID]
	return s, ok
}

func (m *scoreMemo) put(orderID string, score int32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.scores[orderID]; ok {
		return
	}
	if len(m.ring) < cap(m.ring) {
		m.ring = append(m.ring, orderID)
	} else {
		delete(m.scores, m.ring[m.next])
		m.ring[m.next] = orderID
		m.next = (m.next + 1) % len(m.ring)
	}
	m.scores[orderID] = score
}
