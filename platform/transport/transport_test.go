package transport

import "testing"

// The vectors of Kafka's own UtilsTest.testMurmur2 (Java client).
func TestMurmur2MatchesKafka(t *testing.T) {
	t.Parallel()
	for key, want := range map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	} {
		if got := int32(murmur2([]byte(key))); got != want {
			t.Errorf("murmur2(%q) = %d, want %d", key, got, want)
		}
	}
}

func TestPartition(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		key  string
		n    int
		want int32
	}{
		// positive(-790332482) = 1357151166.
		{"foobar", 6, 1357151166 % 6},
		{"foobar", 7, 1357151166 % 7},
		{"abc", 6, 479470107 % 6},
		{"any key", 1, 0},
		{"any key", 0, 0},
	} {
		if got := Partition([]byte(tc.key), tc.n); got != tc.want {
			t.Errorf("Partition(%q, %d) = %d, want %d", tc.key, tc.n, got, tc.want)
		}
	}
}

func TestMessageHeaderLastWins(t *testing.T) {
	t.Parallel()
	m := &Message{Headers: []Header{{Key: "a", Value: []byte("1")}, {Key: "a", Value: []byte("2")}}}
	if got := m.Header("a"); got != "2" {
		t.Fatalf("Header(a) = %q, want 2", got)
	}
	if got := m.Header("b"); got != "" {
		t.Fatalf("Header(b) = %q, want empty", got)
	}
}

// Ends keys name a topic and a partition.
func TestSplitEndsKey(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		key       string
		topic     string
		partition int32
		ok        bool
	}{
		{EndsKey("switchyard.order", 5), "switchyard.order", 5, true},
		{EndsKey("a/b", 0), "a/b", 0, true},
		{"switchyard.order", "", 0, false},
		{"/3", "", 0, false},
		{"t/x", "", 0, false},
	} {
		topic, p, err := SplitEndsKey(c.key)
		if (err == nil) != c.ok || topic != c.topic || p != c.partition {
			t.Errorf("SplitEndsKey(%q) = %q, %d, %v; want %q, %d, ok %v", c.key, topic, p, err, c.topic, c.partition, c.ok)
		}
	}
}
