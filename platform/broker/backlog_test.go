package broker_test

import (
	"testing"

	"github.com/switchyard/switchyard/platform/broker"
)

// A group's backlog counts only what is still retained: a partition whose
// events all expired leaves nothing to read, with or without a commit.
func TestPartitionBacklog(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name                 string
		low, high, committed int64
		want                 int64
	}{
		{"empty partition, no commit", 0, 0, -1001, 0},
		{"nothing read yet", 0, 10, -1001, 10},
		{"half read", 0, 10, 5, 5},
		{"all read", 0, 10, 10, 0},
		{"all expired, no commit", 10, 10, -1001, 0},
		{"some expired, no commit", 4, 10, -1001, 6},
		{"commit behind what is retained", 4, 10, 2, 6},
		{"commit past the retained start", 4, 10, 7, 3},
	} {
		if got := broker.PartitionBacklog(c.low, c.high, c.committed); got != c.want {
			t.Errorf("%s: backlog(low %d, high %d, committed %d) = %d, want %d", c.name, c.low, c.high, c.committed, got, c.want)
		}
	}
}
