package payments_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	moneyv1 "github.com/switchyard/switchyard/gen/go/switchyard/money/v1"
	paymentsv1 "github.com/switchyard/switchyard/gen/go/switchyard/payments/v1"
	"github.com/switchyard/switchyard/platform/service/servicetest"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/services/payments/internal/payments"
	"github.com/switchyard/switchyard/services/rules"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// The saga's payment steps, one event at a time, against the real
// consumer path: what each command writes and which reply it emits.
func TestSagaCommands(t *testing.T) {
	t.Parallel()
	svc := servicetest.Start(t, payments.Spec(), nil)
	client := paymentsv1.NewPaymentServiceClient(svc.Conn)

	customer := uuid.NewString()
	opened := svc.Apply(customer, &customersv1.CustomerRegistered{Customer: &customersv1.Customer{CustomerId: customer}})
	if acct := opened.Inserted("accounts"); len(acct) != 1 || acct[0].Row["customer_id"] != customer || acct[0].Row["balance_minor"] != "0" {
		t.Fatalf("CustomerRegistered wrote %+v, want an empty account", opened.Writes)
	}
	if _, err := client.TopUp(context.Background(), &paymentsv1.TopUpRequest{CustomerId: customer, Amount: rules.Money(1000)}); err != nil {
		t.Fatal(err)
	}
	charge := func(order string, amount *moneyv1.Money) servicetest.Result {
		return svc.Apply(order, &paymentsv1.ChargePayment{OrderId: order, CustomerId: customer, Amount: amount})
	}

	order := uuid.NewString()
	var paymentID string
	t.Run("charge captures the total", func(t *testing.T) {
		res := charge(order, rules.Money(300))
		captured := servicetest.Emitted[*paymentsv1.PaymentCaptured](t, res)
		paymentID = captured.GetPaymentId()
		if captured.GetAmount().GetAmountMinor() != 300 || captured.GetOrderId() != order {
			t.Errorf("captured %v", captured)
		}
		if up := res.Updated("accounts"); len(up) != 1 || up[0].Row["balance_minor"] != "700" {
			t.Errorf("account updates %+v, want balance 700", up)
		}
		if ins := res.Inserted("payments"); len(ins) != 1 || ins[0].Row["kind"] != "CAPTURE" || ins[0].Row["payment_id"] != paymentID {
			t.Errorf("payments rows %+v, want the capture %s", ins, paymentID)
		}
		if e := res.Emitted[0]; e.AggregateType != "payment" || e.AggregateID != order {
			t.Errorf("reply emitted as %s/%s, want payment/%s", e.AggregateType, e.AggregateID, order)
		}
	})
	t.Run("a repeated charge replies with the first capture and takes nothing", func(t *testing.T) {
		// Even one that names another amount: the reply is the capture as made.
		res := charge(order, rules.Money(250))
		if got := servicetest.Emitted[*paymentsv1.PaymentCaptured](t, res); got.GetPaymentId() != paymentID || got.GetAmount().GetAmountMinor() != 300 {
			t.Errorf("repeat captured %s of %v, want the first capture %s of 300", got.GetPaymentId(), got.GetAmount(), paymentID)
		}
		if len(res.Writes) != 0 {
			t.Errorf("repeat wrote %+v", res.Writes)
		}
	})
	t.Run("a charge over the balance is declined", func(t *testing.T) {
		res := charge(uuid.NewString(), rules.Money(701))
		if got := servicetest.Emitted[*paymentsv1.PaymentDeclined](t, res); got.GetReason() != payments.ReasonInsufficientFunds {
			t.Errorf("declined with %q, want %q", got.GetReason(), payments.ReasonInsufficientFunds)
		}
		if len(res.Writes) != 0 {
			t.Errorf("decline wrote %+v", res.Writes)
		}
	})
	t.Run("a charge without an account is declined", func(t *testing.T) {
		o := uuid.NewString()
		res := svc.Apply(o, &paymentsv1.ChargePayment{OrderId: o, CustomerId: uuid.NewString(), Amount: rules.Money(1)})
		if got := servicetest.Emitted[*paymentsv1.PaymentDeclined](t, res); got.GetReason() != payments.ReasonAccountNotFound {
			t.Errorf("declined with %q, want %q", got.GetReason(), payments.ReasonAccountNotFound)
		}
	})
	t.Run("a charge in another currency is dead-lettered", func(t *testing.T) {
		res := charge(uuid.NewString(), &moneyv1.Money{Currency: "EUR", AmountMinor: 5})
		if res.DeadLettered == "" || len(res.Writes) != 0 || len(res.Emitted) != 0 {
			t.Errorf("got %+v, want dead-lettered with nothing written", res)
		}
	})
	t.Run("refund returns the net capture once", func(t *testing.T) {
		res := svc.Apply(order, &paymentsv1.RefundPayment{OrderId: order, Reason: "CANCELLED_BY_CUSTOMER"})
		if got := servicetest.Emitted[*paymentsv1.PaymentRefunded](t, res); got.GetAmount().GetAmountMinor() != 300 || got.GetCustomerId() != customer {
			t.Errorf("refunded %v, want 300 to %s", got, customer)
		}
		if up := res.Updated("accounts"); len(up) != 1 || up[0].Row["balance_minor"] != "1000" {
			t.Errorf("account updates %+v, want balance back to 1000", up)
		}
		if ins := res.Inserted("payments"); len(ins) != 1 || ins[0].Row["kind"] != "REFUND" || ins[0].Row["amount_minor"] != "300" {
			t.Errorf("payments rows %+v, want a refund of 300", ins)
		}

		again := svc.Apply(order, &paymentsv1.RefundPayment{OrderId: order})
		if got := servicetest.Emitted[*paymentsv1.PaymentRefunded](t, again); got.GetAmount().GetAmountMinor() != 0 {
			t.Errorf("second refund returned %v, want 0", got.GetAmount())
		}
		if len(again.Writes) != 0 {
			t.Errorf("second refund wrote %+v", again.Writes)
		}
	})
	t.Run("refund of an order never charged confirms with zero", func(t *testing.T) {
		o := uuid.NewString()
		res := svc.Apply(o, &paymentsv1.RefundPayment{OrderId: o})
		if got := servicetest.Emitted[*paymentsv1.PaymentRefunded](t, res); got.GetAmount().GetAmountMinor() != 0 || got.GetCustomerId() != "" {
			t.Errorf("refunded %v, want zero to no one", got)
		}
	})
}
