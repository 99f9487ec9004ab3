package orders

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard/switchyard/platform/testkit"
)

// Admission refuses at the limit, with RetryInfo, and says whether the age
// bound lowered it.
func TestAdmit(t *testing.T) {
	t.Parallel()
	lowered := newLimit(100, time.Second)
	lowered.observe(time.Now(), 80, 2*time.Second) // to 64
	for _, c := range []struct {
		name    string
		pending int64
		limit   limit
		refused string // in the message; "" when admitted
	}{
		{"idle", 0, newLimit(100, time.Second), ""},
		{"below the count", 99, newLimit(100, time.Second), ""},
		{"at the count", 100, newLimit(100, time.Second), "100 orders are in progress (limit 100)"},
		{"below the lowered limit", 63, lowered, ""},
		{"at the lowered limit", 64, lowered, "64 orders are in progress (limit lowered to 64 since orders waited longer than 1s)"},
		{"count off", 1_000_000, newLimit(-1, time.Second), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := admit(c.pending, &c.limit)
			if c.refused == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			st := status.Convert(err)
			if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), c.refused) {
				t.Fatalf("got %v, want RESOURCE_EXHAUSTED with %q", err, c.refused)
			}
			var retry *errdetails.RetryInfo
			for _, d := range st.Details() {
				if r, ok := d.(*errdetails.RetryInfo); ok {
					retry = r
				}
			}
			if retry == nil {
				t.Fatalf("no RetryInfo in %v", st.Details())
			}
			if d := retry.GetRetryDelay().AsDuration(); d < 500*time.Millisecond || d >= 1500*time.Millisecond {
				t.Fatalf("retry delay %v, want 0.5 s to 1.5 s", d)
			}
		})
	}
}

// How the limit follows the backlog's reads: down to the share of the
// orders in progress that would have waited the age bound, once per
// generation of orders, and back up while orders are on time.
func TestLimit(t *testing.T) {
	t.Parallel()
	type read struct {
		at      time.Duration // since the first read
		pending int64
		waited  time.Duration // by the tenth oldest
		want    int64         // the limit after the read
	}
	s := time.Second
	ms := time.Millisecond
	for _, c := range []struct {
		name       string
		maxPending int
		maxAge     time.Duration
		reads      []read
	}{
		{"on time: the count", 100, s, []read{{0, 50, 500 * ms, 100}, {s, 100, s, 100}}},
		{"a fifth over: five sixths", 100, s, []read{{0, 100, 1200 * ms, 83}}},
		{"a quarter over: four fifths", 100, s, []read{{0, 80, 1250 * ms, 64}}},
		{"just over: nine tenths at most", 100, s, []read{{0, 100, 1010 * ms, 90}}},
		{"far over: four fifths at least", 100, s, []read{{0, 100, 10 * s, 80}}},
		{"from the limit when more are counted", 100, s, []read{{0, 120, 2 * s, 80}}},
		{"late orders admitted before the drop: no second drop", 100, s, []read{
			{0, 80, 2 * s, 64},
			{500 * ms, 80, 2300 * ms, 64},
			{1500 * ms, 60, 1600 * ms, 64},
		}},
		{"late orders admitted after the drop: drops again", 100, s, []read{
			{0, 80, 2 * s, 64},
			{1500 * ms, 40, 1250 * ms, 32},
			{1600 * ms, 40, 1350 * ms, 32},
		}},
		{"grows back a twentieth a read while on time", 100, s, []read{
			{0, 80, 2 * s, 64},
			{200 * ms, 40, 900 * ms, 67},
			{400 * ms, 40, 900 * ms, 70},
		}},
		{"grows by one order at least", 100, s, []read{
			{0, 10, 10 * s, 8},
			{200 * ms, 5, 0, 9},
		}},
		{"not above the count", 100, s, []read{
			{0, 100, 1010 * ms, 90},
			{200 * ms, 90, 0, 94},
			{400 * ms, 90, 0, 99},
			{600 * ms, 90, 0, 100},
		}},
		{"age off: the count", 100, -1, []read{{0, 100, time.Hour, 100}}},
		{"count off: no limit until late", -1, s, []read{
			{0, 300, 0, math.MaxInt32},
			{200 * ms, 300, 2 * s, 240},
			{400 * ms, 150, 0, 252},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			l := newLimit(c.maxPending, c.maxAge)
			start := time.Now()
			for i, r := range c.reads {
				l.observe(start.Add(r.at), r.pending, r.waited)
				if got := l.bound(); got != r.want {
					t.Fatalf("read %d (%v in, %d pending, tenth oldest %v): limit %d, want %d", i, r.at, r.pending, r.waited, got, r.want)
				}
			}
		})
	}
}

// Without a count bound the limit grows back, read after read, to no
// limit again, and never past it: an overflowing limit would refuse
// everything.
func TestLimitWithoutCountGrowsBackWithoutOverflow(t *testing.T) {
	t.Parallel()
	l := newLimit(-1, time.Second)
	now := time.Now()
	l.observe(now, 300, 2*time.Second) // to 240
	for i := range 10_000 {            // about half an hour of reads
		l.observe(now.Add(time.Duration(i+1)*200*time.Millisecond), 300, 0)
		if l.bound() < 240 {
			t.Fatalf("read %d: limit %d, below the 240 it grew from", i+1, l.bound())
		}
	}
	if l.bound() != math.MaxInt32 {
		t.Fatalf("limit %d after half an hour on time, want no limit (%d)", l.bound(), math.MaxInt32)
	}
	if err := admit(1_000_000, &l); err != nil {
		t.Fatalf("a million orders in progress without a count bound: %v", err)
	}
}

// A read of the backlog whose tenth oldest order is late lowers the limit
// the next admission applies.
func TestLateReadLowersAdmission(t *testing.T) {
	t.Parallel()
	b := newBacklog(Options{MaxPending: 100, MaxPendingAge: time.Second})
	b.readDone(b.readStarts(), 80, 3*time.Second, 2*time.Second) // to 64
	b.seen = 63
	if err := b.admit(); err != nil {
		t.Fatalf("63 in progress, limit 64: %v", err)
	}
	if err := b.admit(); err == nil || !strings.Contains(err.Error(), "limit lowered to 64") {
		t.Fatalf("64 in progress, limit lowered to 64: %v", err)
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
	b := newBacklog(Options{MaxPending: 100, MaxPendingAge: -1})
	b.seen = 98
	for i := range 2 {
		if err := b.admit(); err != nil {
			t.Fatalf("order %d refused below the bound: %v", i+1, err)
		}
	}
	if err := b.admit(); err == nil {
		t.Fatal("a third order admitted: 98 read + 2 admitted is the bound of 100")
	}
}

// An order admitted while the backlog query runs may be missing from its
// result (its transaction had not committed at the query's snapshot), so
// it counts on top of the result until the next read.
func TestOrdersAdmittedDuringARead(t *testing.T) {
	t.Parallel()
	b := newBacklog(Options{MaxPending: 100, MaxPendingAge: -1})
	before := b.readStarts()
	for i := range 2 {
		if err := b.admit(); err != nil {
			t.Fatalf("order %d refused: %v", i+1, err)
		}
	}
	b.readDone(before, 98, 0, 0) // the query saw neither of the two
	if got := b.pending(); got != 100 {
		t.Fatalf("pending %d after a read of 98 that missed 2 orders admitted during it, want 100", got)
	}
	if err := b.admit(); err == nil {
		t.Fatal("a third order admitted: 98 read + 2 admitted during the read is the bound of 100")
	}
	b.readDone(b.readStarts(), 100, 0, 0)
	if got := b.pending(); got != 100 {
		t.Fatalf("pending %d after the next read of 100, want 100", got)
	}
}

// Refused clients are not all told to come back in the same instant.
func TestRetryDelaysSpread(t *testing.T) {
	t.Parallel()
	l := newLimit(1, -1)
	delays := map[time.Duration]bool{}
	for range 20 {
		var retry *errdetails.RetryInfo
		for _, d := range status.Convert(admit(1, &l)).Details() {
			if r, ok := d.(*errdetails.RetryInfo); ok {
				retry = r
			}
		}
		delays[retry.GetRetryDelay().AsDuration()] = true
	}
	if len(delays) < 2 {
		t.Fatalf("20 refusals asked for %d distinct delays, want them spread", len(delays))
	}
}

// An admission that started no saga (a retry answered with its order, a
// call that failed) is taken back, so that it does not refuse a new order
// until the next read; one counted in the last read's base is left alone.
func TestUnadmit(t *testing.T) {
	t.Parallel()
	b := newBacklog(Options{MaxPending: 2, MaxPendingAge: -1})
	for i := range 5 { // five retries, each admitted and taken back
		if err := b.admit(); err != nil {
			t.Fatalf("retry %d refused: %v", i+1, err)
		}
		b.unadmit()
	}
	for i := range 2 {
		if err := b.admit(); err != nil {
			t.Fatalf("new order %d refused after retries that started nothing: %v", i+1, err)
		}
	}
	if err := b.admit(); err == nil {
		t.Fatal("a third order admitted at the bound of 2")
	}
	b.readDone(b.readStarts(), 1, 0, 0) // one of the two failed: the read saw one order
	b.unadmit()                         // its failure, counted in the read's base already
	if got := b.pending(); got != 1 {
		t.Fatalf("pending %d after a read of 1 and a failure it already left out, want 1", got)
	}
}

// A loop that keeps failing logs when its failures start and when they
// end, not at every turn.
func TestFailuresLoggedAtTheirEdges(t *testing.T) {
	t.Parallel()
	var logs testkit.Logs
	f := failures{start: "reads fail", end: "reads work again"}
	down := errors.New("down")
	for _, err := range []error{nil, down, down, down, nil, nil, down, nil} {
		f.note(logs.Logger(), err)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		got = append(got, line[strings.Index(line, "level="):])
	}
	want := []string{
		`level=WARN msg="reads fail" error=down`, `level=INFO msg="reads work again"`,
		`level=WARN msg="reads fail" error=down`, `level=INFO msg="reads work again"`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("logged\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
