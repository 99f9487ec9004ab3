package orders

import (
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Admission refuses at maxPending orders in flight, and while the
// ageQuorum-th oldest has waited longer than maxAge.
func TestAdmit(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name       string
		pending    int64
		waited     time.Duration
		maxPending int
		maxAge     time.Duration
		refused    bool
	}{
		{"idle", 0, 0, 100, time.Second, false},
		{"below both", 99, 900 * time.Millisecond, 100, time.Second, false},
		{"at the count", 100, 0, 100, time.Second, true},
		{"waited too long", 80, 2 * time.Second, 100, time.Second, true},
		{"count off", 1_000_000, 0, 0, time.Second, false},
		{"age off", 50, time.Hour, 100, 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := admit(c.pending, c.waited, c.maxPending, c.maxAge)
			if !c.refused {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			st := status.Convert(err)
			if st.Code() != codes.ResourceExhausted {
				t.Fatalf("got %v, want RESOURCE_EXHAUSTED", err)
			}
			var retry *errdetails.RetryInfo
			for _, d := range st.Details() {
				if r, ok := d.(*errdetails.RetryInfo); ok {
					retry = r
				}
			}
			if retry == nil || retry.GetRetryDelay().AsDuration() <= 0 {
				t.Fatalf("no RetryInfo in %v", st.Details())
			}
		})
	}
}

// The admission bounds as the README's configuration table documents them:
// defaults when unset, off when set to 0.
func TestAdmissionBoundsFromEnv(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name       string
		env        map[string]string
		maxPending int
		maxAge     time.Duration
	}{
		{"defaults", nil, 100, time.Second},
		{"set", map[string]string{"SWITCHYARD_ORDERS_MAX_PENDING": "30", "SWITCHYARD_ORDERS_MAX_PENDING_AGE": "300ms"}, 30, 300 * time.Millisecond},
		{"off", map[string]string{"SWITCHYARD_ORDERS_MAX_PENDING": "0", "SWITCHYARD_ORDERS_MAX_PENDING_AGE": "0"}, -1, -1},
	} {
		t.Run(c.name, func(t *testing.T) {
			o, err := OptionsFromEnv(func(k string) string { return c.env[k] })
			if err != nil {
				t.Fatal(err)
			}
			o = o.withDefaults()
			if o.MaxPending != c.maxPending || o.MaxPendingAge != c.maxAge {
				t.Fatalf("MaxPending %d, MaxPendingAge %v; want %d, %v", o.MaxPending, o.MaxPendingAge, c.maxPending, c.maxAge)
			}
		})
	}
}

// Orders admitted since the backlog was last read count towards the bound
// until the next read.
func TestAdmittedOrdersCountUntilTheNextRead(t *testing.T) {
	t.Parallel()
	b := newBacklog()
	b.seen = 98
	o := Options{MaxPending: 100, MaxPendingAge: -1}
	for i := range 2 {
		if err := b.admit(o); err != nil {
			t.Fatalf("order %d refused below the bound: %v", i+1, err)
		}
	}
	if err := b.admit(o); err == nil {
		t.Fatal("a third order admitted: 98 read + 2 admitted is the bound of 100")
	}
}

// An order admitted while the backlog query runs may be missing from its
// result (its transaction had not committed at the query's snapshot), so
// it counts on top of the result until the next read.
func TestOrdersAdmittedDuringARead(t *testing.T) {
	t.Parallel()
	b := newBacklog()
	o := Options{MaxPending: 100, MaxPendingAge: -1}
	before := b.readStarts()
	for i := range 2 {
		if err := b.admit(o); err != nil {
			t.Fatalf("order %d refused: %v", i+1, err)
		}
	}
	b.readDone(before, 98, 0, 0) // the query saw neither of the two
	if got := b.pending(); got != 100 {
		t.Fatalf("pending %d after a read of 98 that missed 2 orders admitted during it, want 100", got)
	}
	if err := b.admit(o); err == nil {
		t.Fatal("a third order admitted: 98 read + 2 admitted during the read is the bound of 100")
	}
	b.readDone(b.readStarts(), 100, 0, 0)
	if got := b.pending(); got != 100 {
		t.Fatalf("pending %d after the next read of 100, want 100", got)
	}
}
