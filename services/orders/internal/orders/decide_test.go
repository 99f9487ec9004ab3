package orders

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
)

// The saga's decisions, from "How an order flows" in the README: the happy
// path, every failure, every late reply and every cancellation race.
func TestDecide(t *testing.T) {
	t.Parallel()
	order := func(status, step string) saga {
		return saga{orderID: "o1", customerID: "c1", status: status, step: step}
	}
	reserving := order(statusPending, stepReserving)
	charging := order(statusPending, stepCharging)
	confirmed := order(statusConfirmed, "DONE")
	cancelled := order(statusCancelled, "DONE")
	for _, c := range []struct {
		name string
		st   saga
		h    happening
		want string // step/status/reason and the commands, as describe prints them
	}{
		// The flow.
		{"reserved: charge the total", reserving, happening{input: stockReserved, total: 1500}, "step CHARGING; ChargePayment(c1 1500)"},
		{"captured: confirm and commit the stock", charging, happening{input: paymentCaptured}, "CONFIRMED; CommitStock"},
		{"rejected: cancel, nothing to undo", reserving, happening{input: stockRejected, reason: "OUT_OF_STOCK"}, "CANCELLED OUT_OF_STOCK"},
		{"declined: release and cancel", charging, happening{input: paymentDeclined, reason: "INSUFFICIENT_FUNDS"}, "CANCELLED INSUFFICIENT_FUNDS; ReleaseStock"},

		// Deadlines.
		{"no reservation in time: release whatever comes", reserving, happening{input: stepTimedOut, reason: "no reply"}, "CANCELLED TIMEOUT; ReleaseStock"},
		{"no payment in time: refund and release", charging, happening{input: stepTimedOut, reason: "no reply"}, "CANCELLED TIMEOUT; RefundPayment, ReleaseStock"},
		{"a deadline never cancels a confirmed order", confirmed, happening{input: stepTimedOut}, "nothing"},

		// Late replies, after a timeout or a cancellation.
		{"late reservation: give it back", cancelled, happening{input: stockReserved, total: 1500}, "ReleaseStock"},
		{"late capture: refund it", cancelled, happening{input: paymentCaptured}, "RefundPayment"},
		{"late rejection: nothing was reserved", cancelled, happening{input: stockRejected, reason: "OUT_OF_STOCK"}, "nothing"},
		{"late decline: nothing was charged", cancelled, happening{input: paymentDeclined, reason: "INSUFFICIENT_FUNDS"}, "nothing"},

		// Duplicates and replies out of place (the inbox removes exact
		// duplicates; these are different events arriving in a state they
		// do not belong to).
		{"second reservation while charging", charging, happening{input: stockReserved, total: 1500}, "nothing"},
		{"capture while still reserving", reserving, happening{input: paymentCaptured}, "nothing"},
		{"capture of a confirmed order", confirmed, happening{input: paymentCaptured}, "nothing"},
		{"decline of a confirmed order", confirmed, happening{input: paymentDeclined, reason: "INSUFFICIENT_FUNDS"}, "nothing"},

		// The customer cancels.
		{"cancel while reserving: release", reserving, happening{input: cancelledByCustomer, reason: "changed my mind"}, "CANCELLED CANCELLED_BY_CUSTOMER; ReleaseStock"},
		{"cancel while charging: refund and release", charging, happening{input: cancelledByCustomer, reason: "changed my mind"}, "CANCELLED CANCELLED_BY_CUSTOMER; RefundPayment, ReleaseStock"},
		{"cancel a confirmed order: refund and restock", confirmed, happening{input: cancelledByCustomer, reason: "changed my mind"}, "CANCELLED CANCELLED_BY_CUSTOMER; RefundPayment, ReleaseStock"},
		{"cancel twice: nothing more", cancelled, happening{input: cancelledByCustomer}, "nothing"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if got := describe(decide(c.st, c.h)); got != c.want {
				t.Errorf("decide = %q, want %q", got, c.want)
			}
		})
	}
}

// Every command of a decision is about the order it was decided for, and a
// compensation carries the note it was given.
func TestDecideAddressesTheOrder(t *testing.T) {
	t.Parallel()
	d := decide(saga{orderID: "o9", status: statusPending, step: stepCharging}, happening{input: cancelledByCustomer, reason: "note"})
	for _, m := range d.commands {
		r := m.ProtoReflect()
		if id := r.Get(r.Descriptor().Fields().ByName("order_id")).String(); id != "o9" {
			t.Errorf("%s is about order %q, want o9", proto.MessageName(m), id)
		}
		if note := r.Get(r.Descriptor().Fields().ByName("reason")).String(); note != "note" {
			t.Errorf("%s carries %q, want the note", proto.MessageName(m), note)
		}
	}
}

// describe prints a decision compactly: the state change, then the
// commands' short names (a charge with its customer and amount).
func describe(d decision) string {
	var parts []string
	switch {
	case d.status != "":
		parts = append(parts, strings.TrimSpace(d.status+" "+d.reason))
	case d.step != "":
		parts = append(parts, "step "+d.step)
	}
	var cmds []string
	for _, m := range d.commands {
		name := string(proto.MessageName(m).Name())
		if name == "ChargePayment" {
			r := m.ProtoReflect()
			amount := r.Get(r.Descriptor().Fields().ByName("amount")).Message()
			name = fmt.Sprintf("ChargePayment(%s %d)", r.Get(r.Descriptor().Fields().ByName("customer_id")).String(),
				amount.Get(amount.Descriptor().Fields().ByName("amount_minor")).Int())
		}
		cmds = append(cmds, name)
	}
	if len(cmds) > 0 {
		parts = append(parts, strings.Join(cmds, ", "))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, "; ")
}
