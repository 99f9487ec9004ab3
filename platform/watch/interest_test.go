package watch

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

// writes records what the hub's flushes ask of the database, and fails or
// runs a hook (something happening while the write is in flight) on demand.
type writes struct {
	dels, ins [][]string
	renewed   []string // by the last write
	fail      error
	during    func()
}

func (w *writes) write(_ context.Context, dels, ins, renewed []string, _ bool) error {
	w.renewed = slices.Sorted(slices.Values(renewed))
	w.dels = append(w.dels, slices.Sorted(slices.Values(dels)))
	w.ins = append(w.ins, slices.Sorted(slices.Values(ins)))
	if w.during != nil {
		w.during()
		w.during = nil
	}
	return w.fail
}

func (w *writes) last() (dels, ins []string) {
	return w.dels[len(w.dels)-1], w.ins[len(w.ins)-1]
}

func bookkeeping(t *testing.T) (*Hub, *writes) {
	t.Helper()
	h := NewHub(nil, "c", nil, nil)
	w := &writes{}
	h.write = w.write
	return h, w
}

func flushed(t *testing.T, h *Hub) error {
	t.Helper()
	return h.flush(context.Background(), false)
}

func waitFor(t *testing.T, r *registration) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	default:
		t.Fatal("registration still pending")
		return nil
	}
}

// The bookkeeping of followed keys, without a database: what each flush
// writes, and what the streams waiting are told.
func TestFollowedKeysBookkeeping(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection reset")

	t.Run("a new key is written once and its waiters told", func(t *testing.T) {
		h, w := bookkeeping(t)
		r1 := h.interest.add("k")
		r2 := h.interest.add("k")
		if r1 != r2 {
			t.Fatal("two subscribers of a new key wait for different writes")
		}
		if err := flushed(t, h); err != nil {
			t.Fatal(err)
		}
		if _, ins := w.last(); !slices.Equal(ins, []string{"k"}) {
			t.Fatalf("inserted %v, want [k]", ins)
		}
		if err := waitFor(t, r1); err != nil {
			t.Fatal(err)
		}
		if r := h.interest.add("k"); r != nil {
			t.Fatal("a third subscriber waits although the row is in place")
		}
	})

	t.Run("the last subscriber's leaving deletes the row", func(t *testing.T) {
		h, w := bookkeeping(t)
		h.interest.add("k")
		_ = flushed(t, h)
		h.interest.remove("k")
		_ = flushed(t, h)
		if dels, _ := w.last(); !slices.Equal(dels, []string{"k"}) {
			t.Fatalf("deleted %v, want [k]", dels)
		}
		if len(h.interest.keys) != 0 {
			t.Fatalf("%d keys kept after their row went", len(h.interest.keys))
		}
	})

	t.Run("after reconnecting, only followed keys are written again", func(t *testing.T) {
		h, w := bookkeeping(t)
		h.interest.add("followed")
		h.interest.add("left")
		_ = flushed(t, h)
		w.fail = boom // the delete of "left" fails
		h.interest.remove("left")
		_ = flushed(t, h)
		w.fail = nil
		h.interest.requeue()
		_ = flushed(t, h)
		dels, ins := w.last()
		if !slices.Equal(ins, []string{"followed"}) || !slices.Equal(dels, []string{"left"}) {
			t.Fatalf("inserted %v and deleted %v, want [followed] and [left]", ins, dels)
		}
	})

	t.Run("a failed write fails its waiters and is repeated", func(t *testing.T) {
		h, w := bookkeeping(t)
		r := h.interest.add("k")
		w.fail = boom
		if err := flushed(t, h); !errors.Is(err, boom) {
			t.Fatalf("flush: %v, want %v", err, boom)
		}
		if err := waitFor(t, r); !errors.Is(err, boom) {
			t.Fatalf("waiter told %v, want %v", err, boom)
		}
		w.fail = nil
		_ = flushed(t, h) // the stream has not left yet: the key is written again
		if _, ins := w.last(); !slices.Equal(ins, []string{"k"}) {
			t.Fatalf("inserted %v, want [k] again", ins)
		}
	})

	t.Run("a key whose write failed and whose stream left is deleted, not forgotten", func(t *testing.T) {
		h, w := bookkeeping(t)
		h.interest.add("k")
		w.fail = boom // the insert may have committed all the same
		_ = flushed(t, h)
		h.interest.remove("k")
		w.fail = nil
		_ = flushed(t, h)
		if dels, _ := w.last(); !slices.Equal(dels, []string{"k"}) {
			t.Fatalf("deleted %v, want [k]", dels)
		}
	})

	t.Run("a key followed again while its delete was in flight is written again", func(t *testing.T) {
		h, w := bookkeeping(t)
		h.interest.add("k")
		_ = flushed(t, h)
		h.interest.remove("k")
		var r *registration
		w.during = func() { r = h.interest.add("k") }
		w.fail = boom // and the delete's outcome is unknown
		_ = flushed(t, h)
		select {
		case <-r.done:
			t.Fatal("the new subscriber was told the key is in place while its row may be gone")
		default:
		}
		w.fail = nil
		_ = flushed(t, h)
		if _, ins := w.last(); !slices.Equal(ins, []string{"k"}) {
			t.Fatalf("inserted %v, want [k]", ins)
		}
		if err := waitFor(t, r); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a subscriber arriving during the insert is told once it committed", func(t *testing.T) {
		h, _ := bookkeeping(t)
		h.interest.add("k")
		var r *registration
		hw := h.write
		h.write = func(ctx context.Context, dels, ins, renewed []string, renew bool) error {
			r = h.interest.add("k")
			return hw(ctx, dels, ins, renewed, renew)
		}
		_ = flushed(t, h)
		if err := waitFor(t, r); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a key whose delete failed makes a new subscriber wait for its insert", func(t *testing.T) {
		h, w := bookkeeping(t)
		h.interest.add("k")
		_ = flushed(t, h)
		h.interest.remove("k")
		w.fail = boom // the delete may have committed
		_ = flushed(t, h)
		w.fail = nil
		r := h.interest.add("k")
		if r == nil {
			t.Fatal("a new subscriber was told the key is in place while its row may be gone")
		}
		_ = flushed(t, h)
		if _, ins := w.last(); !slices.Equal(ins, []string{"k"}) {
			t.Fatalf("inserted %v, want [k]", ins)
		}
		if err := waitFor(t, r); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("renewing re-inserts the followed keys", func(t *testing.T) {
		h, w := bookkeeping(t)
		h.interest.add("a")
		h.interest.add("b")
		_ = flushed(t, h)
		if err := h.flush(context.Background(), true); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(w.renewed, []string{"a", "b"}) {
			t.Fatalf("renewed %v, want [a b]", w.renewed)
		}
	})

	t.Run("after a rewrite the running streams re-read, new subscriber or not", func(t *testing.T) {
		for _, newcomer := range []bool{false, true} {
			h, w := bookkeeping(t)
			ch := make(chan struct{}, 1)
			h.subs["k"] = map[chan struct{}]struct{}{ch: {}}
			h.interest.add("k")
			_ = flushed(t, h)
			h.interest.requeue()
			var r *registration
			if newcomer {
				// The rewrite fails once; a subscriber arriving then waits
				// for the next write, which must still wake the others.
				w.fail = boom
				_ = flushed(t, h)
				w.fail = nil
				if r = h.interest.add("k"); r == nil {
					t.Fatal("a subscriber arriving after a failed rewrite did not wait for the next")
				}
			}
			_ = flushed(t, h)
			if _, ins := w.last(); !slices.Equal(ins, []string{"k"}) {
				t.Fatalf("rewrote %v, want [k]", ins)
			}
			select {
			case <-ch:
			default:
				t.Fatalf("running stream not woken after the rewrite (newcomer %v)", newcomer)
			}
			if r != nil {
				if err := waitFor(t, r); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}

// Rows count as possibly expired once renewals have failed for the TTL
// less one renewal period.
func TestLapsed(t *testing.T) {
	t.Parallel()
	now := time.Now()
	for _, c := range []struct {
		since time.Duration
		want  bool
	}{
		{interestRenew, false},
		{interestTTL - interestRenew - time.Second, false},
		{interestTTL - interestRenew, true},
		{2 * interestTTL, true},
	} {
		if got := lapsed(now.Add(-c.since), now); got != c.want {
			t.Errorf("last renewed %v ago: lapsed %v, want %v", c.since, got, c.want)
		}
	}
}

// A renewal whose write fails is carried into the retries until one
// succeeds, rather than waiting for the next tick a minute later: rows
// left unrenewed expire, and writers stop notifying their keys.
func TestFailedRenewalIsRetried(t *testing.T) {
	t.Parallel()
	h, _ := bookkeeping(t)
	h.forget = func(context.Context) error { return nil }
	// The record writes one flush at a time; the second write fails.
	renews := make(chan bool, 8)
	var n int
	h.write = func(_ context.Context, _, _, _ []string, renew bool) error {
		n++
		renews <- renew
		if n == 2 {
			return errors.New("connection lost")
		}
		return nil
	}
	next := func(what string) bool {
		t.Helper()
		select {
		case renew := <-renews:
			return renew
		case <-time.After(10 * time.Second):
			t.Fatal("no write for " + what)
			return false
		}
	}
	ticks := make(chan time.Time)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.record(ctx, ticks) }()
	t.Cleanup(func() { cancel(); <-done })

	h.interest.add("k")
	if next("the new key's insert") {
		t.Fatal("the first insert renewed, with no tick")
	}
	ticks <- time.Now()
	if !next("the renewal") {
		t.Fatal("a tick's flush did not renew")
	}
	if !next("10 s after a failed renewal: it was dropped, not retried") {
		t.Fatal("the retry after a failed renewal did not renew: the rows would go unrenewed until the next tick")
	}
	h.interest.add("k2")
	if next("the second key's insert") {
		t.Fatal("a flush after a successful renewal renewed again")
	}
}
