package orders

import (
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	paymentsv1 "github.com/switchyard/switchyard/gen/go/switchyard/payments/v1"
	"github.com/switchyard/switchyard/services/rules"
)

// Order statuses and saga steps as stored in the orders table.
const (
	statusPending   = "PENDING"
	statusConfirmed = "CONFIRMED"
	statusCancelled = "CANCELLED"

	stepReserving = "RESERVING"
	stepCharging  = "CHARGING"
)

// sagaInput is what happened to an order: a participant's reply, its step's
// deadline passing, or the customer cancelling.
type sagaInput int

const (
	stockReserved sagaInput = iota
	stockRejected
	paymentCaptured
	paymentDeclined
	stepTimedOut
	cancelledByCustomer
)

// happening is one input with what the decision needs from it.
type happening struct {
	input  sagaInput
	reason string // a rejection's or decline's failure reason; a cancellation's note
	total  int64  // stockReserved: the reserved total
}

// decision is what the saga does about a happening: the order's next step
// (while it stays pending) or its terminal status and failure reason, and
// the commands to send, in order (a terminal status also emits
// OrderConfirmed or OrderCancelled after them). The zero decision changes
// nothing.
type decision struct {
	step     string
	status   string
	reason   string
	commands []proto.Message
}

// decide is the saga: given an order's state and what happened, what to do.
// It reads and writes nothing, so every case — including late replies and
// cancellations racing them — is table-tested in isolation.
//
// Compensations are safe to send even if the step they undo never happened:
// each travels on the order's partition after its step's command, and
// participants treat them as no-ops when there is nothing to undo.
func decide(st saga, h happening) decision {
	release := func(note string) proto.Message { return &inventoryv1.ReleaseStock{OrderId: st.orderID, Reason: note} }
	refund := func(note string) proto.Message { return &paymentsv1.RefundPayment{OrderId: st.orderID, Reason: note} }
	switch h.input {
	case stockReserved:
		switch {
		case st.awaiting(stepReserving):
			return decision{step: stepCharging, commands: []proto.Message{
				&paymentsv1.ChargePayment{OrderId: st.orderID, CustomerId: st.customerID, Amount: rules.Money(h.total)}}}
		case st.status == statusCancelled:
			// A late reservation for an order already cancelled: give it back.
			return decision{commands: []proto.Message{release("late reservation")}}
		}
	case stockRejected:
		if st.awaiting(stepReserving) { // a late rejection changes nothing: nothing was reserved
			return decision{status: statusCancelled, reason: h.reason}
		}
	case paymentCaptured:
		switch {
		case st.awaiting(stepCharging):
			return decision{status: statusConfirmed, commands: []proto.Message{&inventoryv1.CommitStock{OrderId: st.orderID}}}
		case st.status == statusCancelled:
			// A late capture for an order already cancelled: refund it.
			return decision{commands: []proto.Message{refund("late capture")}}
		}
	case paymentDeclined:
		if st.awaiting(stepCharging) { // a late decline changes nothing: nothing was charged
			return decision{status: statusCancelled, reason: h.reason, commands: []proto.Message{release(h.reason)}}
		}
	case stepTimedOut, cancelledByCustomer:
		reason := ReasonTimeout
		if h.input == cancelledByCustomer {
			reason = ReasonCancelledByCustomer
		}
		switch {
		case st.awaiting(stepReserving):
			return decision{status: statusCancelled, reason: reason, commands: []proto.Message{release(h.reason)}}
		case st.awaiting(stepCharging), st.status == statusConfirmed && h.input == cancelledByCustomer:
			return decision{status: statusCancelled, reason: reason, commands: []proto.Message{refund(h.reason), release(h.reason)}}
		}
	}
	return decision{}
}
