package analytics

// The projections are kept as pure decisions (this file) applied by SQL
// (store.go). What an order contributes depends only on the set of its
// events seen so far, never on their order: a rebuild receives an order's
// events from two consumers (the replay and the live group), so the
// cancellation may arrive before the confirmation it undoes.

// Line is one confirmed order line.
type Line struct {
	SKU        string
	Units      int64
	RevenueMin int64 // units × unit price, minor units
}

// OrderFact is what the projections know about one order.
type OrderFact struct {
	CustomerID string
	Confirmed  bool   // an OrderConfirmed was seen
	Cancelled  bool   // an OrderCancelled was seen
	Reason     string // the failure reason of the cancellation
	Lines      []Line // the confirmed order's lines
	TotalMinor int64  // the confirmed order's total
}

// Outcome is an order's outcome as the projections count it.
type Outcome string

// Outcomes. An order cancelled after its confirmation (refunded) counts as
// cancelled only, as the orders database has it.
const (
	OutcomeNone      Outcome = ""
	OutcomeConfirmed Outcome = "CONFIRMED"
	OutcomeCancelled Outcome = "CANCELLED"
)

// Outcome returns the order's outcome: cancelled wins over confirmed.
func (f OrderFact) Outcome() Outcome {
	switch {
	case f.Cancelled:
		return OutcomeCancelled
	case f.Confirmed:
		return OutcomeConfirmed
	default:
		return OutcomeNone
	}
}

// Confirm returns f after an OrderConfirmed with these lines.
func (f OrderFact) Confirm(customerID string, lines []Line, totalMinor int64) OrderFact {
	f.CustomerID, f.Confirmed, f.Lines, f.TotalMinor = customerID, true, lines, totalMinor
	return f
}

// Cancel returns f after an OrderCancelled for reason.
func (f OrderFact) Cancel(customerID, reason string) OrderFact {
	f.CustomerID, f.Cancelled, f.Reason = customerID, true, reason
	return f
}

// Delta is what one change of an order does to the aggregates.
type Delta struct {
	// Outcomes maps (outcome, failure reason) to the change of its count
	// and revenue.
	Outcomes map[OutcomeKey]OutcomeDelta
	// SKUs maps a SKU to the change of its units and revenue.
	SKUs map[string]Line
	// Customer is the change of the customer's summary.
	Customer CustomerDelta
}

// OutcomeKey names one row of the outcomes table.
type OutcomeKey struct {
	Outcome Outcome
	Reason  string // empty for confirmed orders
}

// OutcomeDelta changes one row of the outcomes table.
type OutcomeDelta struct {
	Orders, RevenueMinor int64
}

// CustomerDelta changes one customer's summary.
type CustomerDelta struct {
	Confirmed, Cancelled, SpentMinor int64
}

// Change returns what moving an order from before to after does to the
// aggregates: the old outcome's contribution is taken away, the new one's
// added. Nothing changes when the outcome stays the same.
func Change(before, after OrderFact) Delta {
	d := Delta{Outcomes: map[OutcomeKey]OutcomeDelta{}, SKUs: map[string]Line{}}
	if before.Outcome() == after.Outcome() {
		return d
	}
	d.contribute(before, -1)
	d.contribute(after, +1)
	return d
}

func (d *Delta) contribute(f OrderFact, sign int64) {
	switch f.Outcome() {
	case OutcomeConfirmed:
		k := OutcomeKey{Outcome: OutcomeConfirmed}
		o := d.Outcomes[k]
		o.Orders += sign
		o.RevenueMinor += sign * f.TotalMinor
		d.Outcomes[k] = o
		d.Customer.Confirmed += sign
		d.Customer.SpentMinor += sign * f.TotalMinor
		for _, l := range f.Lines {
			s := d.SKUs[l.SKU]
			s.SKU = l.SKU
			s.Units += sign * l.Units
			s.RevenueMin += sign * l.RevenueMin
			d.SKUs[l.SKU] = s
		}
	case OutcomeCancelled:
		k := OutcomeKey{Outcome: OutcomeCancelled, Reason: f.Reason}
		o := d.Outcomes[k]
		o.Orders += sign
		d.Outcomes[k] = o
		d.Customer.Cancelled += sign
	}
}
