package relay

import (
	"testing"
)

func TestParseSnapshot(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    snapshot
		wantErr bool
	}{
		{in: "748:748:", want: snapshot{xmin: 748, xmax: 748}},
		{in: "740:752:741,745", want: snapshot{xmin: 740, xmax: 752, running: map[uint64]struct{}{741: {}, 745: {}}}},
		{in: "4294967300:4294967310:4294967301", want: snapshot{xmin: 4294967300, xmax: 4294967310, running: map[uint64]struct{}{4294967301: {}}}},
		{in: "748:748", wantErr: true},
		{in: "x:748:", wantErr: true},
		{in: "748:y:", wantErr: true},
		{in: "749:748:", wantErr: true},
		{in: "740:752:741,,745", wantErr: true},
	} {
		got, err := parseSnapshot(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("parseSnapshot(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if got.xmin != tc.want.xmin || got.xmax != tc.want.xmax || len(got.running) != len(tc.want.running) {
			t.Errorf("parseSnapshot(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		for x := range tc.want.running {
			if _, ok := got.running[x]; !ok {
				t.Errorf("parseSnapshot(%q): %d not running", tc.in, x)
			}
		}
	}
}

// A 32-bit id from the write-ahead log is placed in the epoch nearest the
// snapshot's: around the wrap from 2^32-1 to 2^32, in both directions.
func TestSnapshotVisible(t *testing.T) {
	t.Parallel()
	const epoch1 = uint64(1) << 32
	plain := snapshot{xmin: 740, xmax: 752, running: map[uint64]struct{}{741: {}, 745: {}}}
	// Epoch 1 has begun; ids just below 2^32 belong to epoch 0.
	wrapped := snapshot{xmin: epoch1 - 5, xmax: epoch1 + 10, running: map[uint64]struct{}{epoch1 - 2: {}, epoch1 + 3: {}}}
	for _, tc := range []struct {
		name string
		snap snapshot
		xid  uint32
		want bool
	}{
		{"below xmin", plain, 700, true},
		{"between, finished", plain, 743, true},
		{"between, running", plain, 745, false},
		{"at xmin, running", plain, 741, false},
		{"at xmax", plain, 752, false},
		{"above xmax", plain, 800, false},
		{"previous epoch, below xmin", wrapped, ^uint32(0) - 10, true},
		{"previous epoch, running", wrapped, ^uint32(0) - 1, false},
		{"previous epoch, finished", wrapped, ^uint32(0), true},
		{"this epoch, finished", wrapped, 2, true},
		{"this epoch, running", wrapped, 3, false},
		{"this epoch, at xmax", wrapped, 10, false},
	} {
		if got := tc.snap.visible(tc.xid); got != tc.want {
			t.Errorf("%s: visible(%d) in %d:%d = %v, want %v", tc.name, tc.xid, tc.snap.xmin, tc.snap.xmax, got, tc.want)
		}
	}
}

// The last snapshot answers for what it saw finished; before the first
// snapshot nothing is known.
func TestGateKnown(t *testing.T) {
	t.Parallel()
	var g visibilityGate
	for _, xid := range []uint32{0, 1, 1 << 31, ^uint32(0)} {
		if g.known(xid) {
			t.Fatalf("%d known before any snapshot", xid)
		}
	}
	g.last = snapshot{xmin: (1 << 32) + 5, xmax: (1 << 32) + 9, running: map[uint64]struct{}{(1 << 32) + 5: {}, (1 << 32) + 7: {}}}
	for xid, want := range map[uint32]bool{4: true, ^uint32(0): true, 5: false, 6: true, 7: false, 8: true, 9: false, 10: false} {
		if got := g.known(xid); got != want {
			t.Errorf("known(%d) = %v, want %v", xid, got, want)
		}
	}
}

func TestNamesStandby(t *testing.T) {
	t.Parallel()
	for setting, want := range map[string]bool{
		"":                                       false,
		"*":                                      true,
		"s1, s2":                                 false,
		`s1, "switchyard-relay"`:                 true,
		`"Switchyard-Relay"`:                     true, // compared without regard to case
		"FIRST 1 (s1, *)":                        true,
		"first 1 (s1, s2)":                       false,
		`ANY 2 ( s1 , "switchyard-relay" , s3 )`: true,
		"2 (s1, s2)":                             false,
		`"s1(x)", s2`:                            false, // a quoted parenthesis is part of a name
		`"say ""*"""`:                            false,
		`s1,"*"`:                                 true,
	} {
		if got := namesStandby(setting, "switchyard-relay"); got != want {
			t.Errorf("namesStandby(%q) = %v, want %v", setting, got, want)
		}
	}
}
