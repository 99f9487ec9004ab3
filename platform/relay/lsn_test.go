package relay

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// The confirmed LSN moves only past transactions that are committed and
// whose every event the broker acknowledged, in WAL order; an idle stream
// moves it to the server's WAL end.
func TestLSNTracker(t *testing.T) {
	t.Parallel()
	type step struct {
		op   string // begin, add, ack, commit, idle
		txn  int    // which transaction (index in begin order)
		lsn  pglogrepl.LSN
		want pglogrepl.LSN // confirmed() after the step
	}
	for _, c := range []struct {
		name  string
		steps []step
	}{
		{"one transaction: confirmed after commit and ack, in either order", []step{
			{op: "begin", txn: 0}, {op: "add", txn: 0}, {op: "commit", txn: 0, lsn: 100, want: 0},
			{op: "ack", txn: 0, want: 100},
		}},
		{"acked before the commit arrives", []step{
			{op: "begin", txn: 0}, {op: "add", txn: 0}, {op: "ack", txn: 0, want: 0},
			{op: "commit", txn: 0, lsn: 100, want: 100},
		}},
		{"a later transaction acked first waits for the earlier one", []step{
			{op: "begin", txn: 0}, {op: "add", txn: 0}, {op: "commit", txn: 0, lsn: 100},
			{op: "begin", txn: 1}, {op: "add", txn: 1}, {op: "commit", txn: 1, lsn: 200},
			{op: "ack", txn: 1, want: 0},
			{op: "ack", txn: 0, want: 200},
		}},
		{"a transaction with several events needs every ack", []step{
			{op: "begin", txn: 0}, {op: "add", txn: 0}, {op: "add", txn: 0}, {op: "commit", txn: 0, lsn: 100},
			{op: "ack", txn: 0, want: 0},
			{op: "ack", txn: 0, want: 100},
		}},
		{"a transaction without events confirms at its commit", []step{
			{op: "begin", txn: 0}, {op: "commit", txn: 0, lsn: 100, want: 100},
		}},
		{"idle moves to the WAL end only when nothing is in flight", []step{
			{op: "begin", txn: 0}, {op: "add", txn: 0}, {op: "idle", lsn: 500, want: 0},
			{op: "commit", txn: 0, lsn: 100}, {op: "ack", txn: 0, want: 100},
			{op: "idle", lsn: 500, want: 500},
			{op: "idle", lsn: 400, want: 500}, // never backwards
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tr := &lsnTracker{pendingSince: new(atomic.Int64)}
			var txns []*txn
			for i, s := range c.steps {
				switch s.op {
				case "begin":
					txns = append(txns, tr.begin())
				case "add":
					tr.add(txns[s.txn], time.Now())
				case "ack":
					tr.ack(txns[s.txn])
				case "commit":
					tr.commit(txns[s.txn], s.lsn)
				case "idle":
					tr.idleAt(s.lsn)
				}
				if got := tr.confirmed(); got != s.want {
					t.Fatalf("step %d (%s): confirmed %v, want %v", i, s.op, got, s.want)
				}
			}
		})
	}
}

// The oldest unacknowledged event's age is the first transaction still
// waiting for an ack, and zero when none is.
func TestLSNTrackerPendingSince(t *testing.T) {
	t.Parallel()
	tr := &lsnTracker{pendingSince: new(atomic.Int64)}
	t0, t1 := time.Unix(100, 0), time.Unix(200, 0)
	a, b := tr.begin(), tr.begin()
	tr.add(a, t0)
	tr.add(b, t1)
	if got := tr.pendingSince.Load(); got != t0.UnixNano() {
		t.Fatalf("pending since %d, want the first transaction's %d", got, t0.UnixNano())
	}
	tr.ack(a)
	if got := tr.pendingSince.Load(); got != t1.UnixNano() {
		t.Fatalf("after acking the first: pending since %d, want %d", got, t1.UnixNano())
	}
	tr.ack(b)
	if got := tr.pendingSince.Load(); got != 0 {
		t.Fatalf("all acked: pending since %d, want 0", got)
	}
}
