package analytics

import (
	"reflect"
	"testing"
)

func TestChange(t *testing.T) {
	lines := []Line{{SKU: "A", Units: 2, RevenueMin: 300}, {SKU: "B", Units: 1, RevenueMin: 50}}
	none := OrderFact{}
	confirmed := none.Confirm("c", lines, 350)
	cancelled := none.Cancel("c", "OUT_OF_STOCK")
	refunded := confirmed.Cancel("c", "CANCELLED_BY_CUSTOMER")
	confirmedKey := OutcomeKey{Outcome: OutcomeConfirmed}
	tests := []struct {
		name          string
		before, after OrderFact
		want          Delta
	}{
		{"confirmation counts the sale", none, confirmed, Delta{
			Outcomes: map[OutcomeKey]OutcomeDelta{confirmedKey: {Orders: 1, RevenueMinor: 350}},
			SKUs:     map[string]Line{"A": {SKU: "A", Units: 2, RevenueMin: 300}, "B": {SKU: "B", Units: 1, RevenueMin: 50}},
			Customer: CustomerDelta{Confirmed: 1, SpentMinor: 350},
		}},
		{"cancellation counts its reason", none, cancelled, Delta{
			Outcomes: map[OutcomeKey]OutcomeDelta{{Outcome: OutcomeCancelled, Reason: "OUT_OF_STOCK"}: {Orders: 1}},
			SKUs:     map[string]Line{},
			Customer: CustomerDelta{Cancelled: 1},
		}},
		{"cancelling a confirmed order takes the sale back", confirmed, refunded, Delta{
			Outcomes: map[OutcomeKey]OutcomeDelta{
				confirmedKey: {Orders: -1, RevenueMinor: -350},
				{Outcome: OutcomeCancelled, Reason: "CANCELLED_BY_CUSTOMER"}: {Orders: 1},
			},
			SKUs:     map[string]Line{"A": {SKU: "A", Units: -2, RevenueMin: -300}, "B": {SKU: "B", Units: -1, RevenueMin: -50}},
			Customer: CustomerDelta{Confirmed: -1, Cancelled: 1, SpentMinor: -350},
		}},
		{"a confirmation after the cancellation changes nothing", cancelled, cancelled.Confirm("c", lines, 350), Delta{
			Outcomes: map[OutcomeKey]OutcomeDelta{}, SKUs: map[string]Line{},
		}},
		{"the same event again changes nothing", confirmed, confirmed.Confirm("c", lines, 350), Delta{
			Outcomes: map[OutcomeKey]OutcomeDelta{}, SKUs: map[string]Line{},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Change(tt.before, tt.after); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Change = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// An order's final contribution does not depend on the order its events
// arrive in (a rebuild gets them from two consumers).
func TestChangeIsOrderIndependent(t *testing.T) {
	lines := []Line{{SKU: "A", Units: 1, RevenueMin: 100}}
	confirm := func(f OrderFact) OrderFact { return f.Confirm("c", lines, 100) }
	cancel := func(f OrderFact) OrderFact { return f.Cancel("c", "CANCELLED_BY_CUSTOMER") }
	total := func(steps ...func(OrderFact) OrderFact) Delta {
		sum := Delta{Outcomes: map[OutcomeKey]OutcomeDelta{}, SKUs: map[string]Line{}}
		f := OrderFact{}
		for _, step := range steps {
			next := step(f)
			d := Change(f, next)
			for k, v := range d.Outcomes {
				o := sum.Outcomes[k]
				o.Orders += v.Orders
				o.RevenueMinor += v.RevenueMinor
				sum.Outcomes[k] = o
			}
			for k, v := range d.SKUs {
				s := sum.SKUs[k]
				s.Units += v.Units
				sum.SKUs[k] = s
			}
			sum.Customer.Confirmed += d.Customer.Confirmed
			sum.Customer.Cancelled += d.Customer.Cancelled
			sum.Customer.SpentMinor += d.Customer.SpentMinor
			f = next
		}
		for k, v := range sum.Outcomes {
			if v == (OutcomeDelta{}) {
				delete(sum.Outcomes, k)
			}
		}
		for k, v := range sum.SKUs {
			if v.Units == 0 {
				delete(sum.SKUs, k)
			}
		}
		return sum
	}
	if a, b := total(confirm, cancel), total(cancel, confirm); !reflect.DeepEqual(a, b) {
		t.Fatalf("confirm then cancel = %+v, cancel then confirm = %+v", a, b)
	}
}
