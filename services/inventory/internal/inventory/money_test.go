package inventory

import (
	"math"
	"testing"
)

// An order's total is checked arithmetic: 2^62 x 4 wrapped to 0 before and
// confirmed an order for free.
func TestAddLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		total, price, qty int64
		want              int64
		ok                bool
	}{
		{0, 1500, 2, 3000, true},
		{3000, 1, 1000, 4000, true},
		{0, maxPrice, 1000, maxPrice * 1000, true},
		{0, 1 << 62, 4, 0, false},
		{0, math.MaxInt64, 2, 0, false},
		{math.MaxInt64 - 10, 5, 3, 0, false},
		{math.MaxInt64 - 15, 5, 3, math.MaxInt64, true},
		{0, -1, 1, 0, false},
	} {
		got, ok := addLine(tc.total, tc.price, tc.qty)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("addLine(%d, %d, %d) = %d, %v; want %d, %v", tc.total, tc.price, tc.qty, got, ok, tc.want, tc.ok)
		}
	}
}
