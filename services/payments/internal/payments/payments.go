// Package payments keeps customer accounts and takes part in the order saga:
// it captures an order's total or declines it, and refunds what an order has
// captured when the order is cancelled.
package payments

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	paymentsv1 "github.com/switchyard/switchyard/gen/go/switchyard/payments/v1"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/idempotency"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/pagetoken"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/validate"
	"github.com/switchyard/switchyard/services/rules"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Decline reasons in PaymentDeclined.
const (
	ReasonInsufficientFunds = "INSUFFICIENT_FUNDS"
	ReasonAccountNotFound   = "ACCOUNT_NOT_FOUND"
)

// maxTopUp bounds a single top-up (10 million USD) so balances never overflow.
const maxTopUp = 1_000_000_000

// Spec describes the payments service: it opens accounts for new customers
// and consumes the order saga's commands.
func Spec() service.Spec {
	return service.Spec{Name: "payments", Port: 50054, Migrations: migrations, Emits: true, Setup: Setup}
}

// Setup registers the PaymentService and the event handlers.
func Setup(env *service.Env) error {
	s := &server{env: env}
	paymentsv1.RegisterPaymentServiceServer(env.Server, s)
	consumer.Handle(env.Consumer, s.openAccount)
	consumer.Handle(env.Consumer, s.charge)
	consumer.Handle(env.Consumer, s.refund)
	return nil
}

type server struct {
	paymentsv1.UnimplementedPaymentServiceServer
	env *service.Env
}

func (s *server) account(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, customerID string, lock bool) (*paymentsv1.Account, error) {
	sql := `SELECT balance_minor FROM accounts WHERE customer_id = $1`
	if lock {
		sql += ` FOR UPDATE`
	}
	var balance int64
	err := q.QueryRow(ctx, sql, customerID).Scan(&balance)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "no account for customer %s", customerID)
	}
	if err != nil {
		return nil, fmt.Errorf("read account %s: %w", customerID, err)
	}
	return &paymentsv1.Account{CustomerId: customerID, Balance: rules.Money(balance)}, nil
}

func (s *server) GetAccount(ctx context.Context, req *paymentsv1.GetAccountRequest) (*paymentsv1.GetAccountResponse, error) {
	var v validate.Violations
	v.UUID("customer_id", req.GetCustomerId())
	if err := v.Err(); err != nil {
		return nil, err
	}
	a, err := s.account(ctx, s.env.Pool, req.GetCustomerId(), false)
	if err != nil {
		return nil, err
	}
	return &paymentsv1.GetAccountResponse{Account: a}, nil
}

func (s *server) TopUp(ctx context.Context, req *paymentsv1.TopUpRequest) (*paymentsv1.TopUpResponse, error) {
	var v validate.Violations
	v.UUID("customer_id", req.GetCustomerId())
	rules.Amount(&v, "amount", req.GetAmount())
	if req.GetAmount().GetAmountMinor() > maxTopUp {
		v.Addf("amount.amount_minor", "must be at most %d", maxTopUp)
	}
	v.Length("idempotency_key", req.GetIdempotencyKey(), 0, 200)
	if err := v.Err(); err != nil {
		return nil, err
	}
	var resp *paymentsv1.TopUpResponse
	err := pgx.BeginFunc(ctx, s.env.Pool, func(tx pgx.Tx) error {
		var err error
		resp, _, err = idempotency.Do(ctx, tx, "TopUp/"+req.GetCustomerId(), req.GetIdempotencyKey(), req, func() (*paymentsv1.TopUpResponse, error) {
			if _, err := s.account(ctx, tx, req.GetCustomerId(), true); err != nil {
				return nil, err
			}
			var balance int64
			if err := tx.QueryRow(ctx, `UPDATE accounts SET balance_minor = balance_minor + $2 WHERE customer_id = $1 RETURNING balance_minor`,
				req.GetCustomerId(), req.GetAmount().GetAmountMinor()).Scan(&balance); err != nil {
				return nil, err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO payments (payment_id, customer_id, kind, amount_minor) VALUES ($1, $2, 'TOP_UP', $3)`,
				uuid.New(), req.GetCustomerId(), req.GetAmount().GetAmountMinor()); err != nil {
				return nil, err
			}
			return &paymentsv1.TopUpResponse{Account: &paymentsv1.Account{CustomerId: req.GetCustomerId(), Balance: rules.Money(balance)}}, nil
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

var kinds = map[string]paymentsv1.PaymentKind{
	"TOP_UP": paymentsv1.PaymentKind_PAYMENT_KIND_TOP_UP, "CAPTURE": paymentsv1.PaymentKind_PAYMENT_KIND_CAPTURE, "REFUND": paymentsv1.PaymentKind_PAYMENT_KIND_REFUND,
}

func (s *server) ListPayments(ctx context.Context, req *paymentsv1.ListPaymentsRequest) (*paymentsv1.ListPaymentsResponse, error) {
	var v validate.Violations
	v.UUID("customer_id", req.GetCustomerId())
	v.Range("page_size", int64(req.GetPageSize()), 0, 1000)
	afterTime, afterID := time.Now().Add(24*time.Hour), "ffffffff-ffff-ffff-ffff-ffffffffffff"
	if t := req.GetPageToken(); t != "" {
		ts, id, ok := pagetoken.Decode(t)
		if !ok {
			v.Add("page_token", "is not a token returned by ListPayments")
		}
		afterTime, afterID = ts, id
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = 50
	}
	if _, err := s.account(ctx, s.env.Pool, req.GetCustomerId(), false); err != nil {
		return nil, err
	}
	rows, err := s.env.Pool.Query(ctx, `SELECT payment_id, coalesce(order_id::text, ''), kind, amount_minor, create_time
		FROM payments WHERE customer_id = $1 AND (create_time, payment_id) < ($2, $3)
		ORDER BY create_time DESC, payment_id DESC LIMIT $4`, req.GetCustomerId(), afterTime, afterID, size+1)
	if err != nil {
		return nil, err
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*paymentsv1.Payment, error) {
		p := &paymentsv1.Payment{CustomerId: req.GetCustomerId()}
		var id uuid.UUID
		var kind string
		var amount int64
		var at time.Time
		if err := r.Scan(&id, &p.OrderId, &kind, &amount, &at); err != nil {
			return nil, err
		}
		p.PaymentId, p.Kind, p.Amount, p.CreateTime = id.String(), kinds[kind], rules.Money(amount), timestamppb.New(at)
		return p, nil
	})
	if err != nil {
		return nil, err
	}
	resp := &paymentsv1.ListPaymentsResponse{Payments: list}
	if len(list) > size {
		resp.Payments = list[:size]
		last := list[size-1]
		resp.NextPageToken = pagetoken.Encode(last.GetCreateTime().AsTime(), last.GetPaymentId())
	}
	return resp, nil
}

// openAccount opens an empty account for a new customer.
func (s *server) openAccount(ctx context.Context, tx pgx.Tx, ev *customersv1.CustomerRegistered, _ consumer.Metadata) error {
	_, err := tx.Exec(ctx, `INSERT INTO accounts (customer_id) VALUES ($1) ON CONFLICT DO NOTHING`, ev.GetCustomer().GetCustomerId())
	return err
}

// emit writes a saga reply keyed by the order id.
func (s *server) emit(ctx context.Context, tx pgx.Tx, orderID string, reply proto.Message) error {
	return s.send(ctx, tx, &pgx.Batch{}, orderID, reply)
}

// charge captures an order's total, or declines it.
func (s *server) charge(ctx context.Context, tx pgx.Tx, cmd *paymentsv1.ChargePayment, _ consumer.Metadata) error {
	orderID, customerID, amount := cmd.GetOrderId(), cmd.GetCustomerId(), cmd.GetAmount().GetAmountMinor()
	if amount <= 0 || cmd.GetAmount().GetCurrency() != rules.Currency {
		return consumer.Permanent(fmt.Errorf("order %s: cannot charge %v", orderID, cmd.GetAmount()))
	}
	var existing uuid.UUID
	var captured int64
	err := tx.QueryRow(ctx, `SELECT payment_id, amount_minor FROM payments WHERE order_id = $1 AND kind = 'CAPTURE'`, orderID).Scan(&existing, &captured)
	if err == nil { // a repeated command: the first capture stands, as it was
		return s.emit(ctx, tx, orderID, &paymentsv1.PaymentCaptured{OrderId: orderID, CustomerId: customerID, PaymentId: existing.String(), Amount: rules.Money(captured)})
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	acct, err := s.account(ctx, tx, customerID, true)
	if status.Code(err) == codes.NotFound {
		return s.emit(ctx, tx, orderID, &paymentsv1.PaymentDeclined{OrderId: orderID, CustomerId: customerID, Reason: ReasonAccountNotFound})
	}
	if err != nil {
		return err
	}
	if acct.GetBalance().GetAmountMinor() < amount {
		return s.emit(ctx, tx, orderID, &paymentsv1.PaymentDeclined{OrderId: orderID, CustomerId: customerID, Reason: ReasonInsufficientFunds})
	}
	// The debit, its record and the reply in one round trip.
	id := uuid.New()
	b := &pgx.Batch{}
	b.Queue(`UPDATE accounts SET balance_minor = balance_minor - $2 WHERE customer_id = $1`, customerID, amount)
	b.Queue(`INSERT INTO payments (payment_id, customer_id, order_id, kind, amount_minor) VALUES ($1, $2, $3, 'CAPTURE', $4)`,
		id, customerID, orderID, amount)
	return s.send(ctx, tx, b, orderID, &paymentsv1.PaymentCaptured{OrderId: orderID, CustomerId: customerID, PaymentId: id.String(), Amount: rules.Money(amount)})
}

// send sends b's statements with a saga reply keyed by the order id: one
// round trip.
func (s *server) send(ctx context.Context, tx pgx.Tx, b *pgx.Batch, orderID string, reply proto.Message) error {
	if err := s.env.Outbox.Queue(ctx, b, outbox.Event{AggregateID: orderID, Message: reply}); err != nil {
		return err
	}
	return tx.SendBatch(ctx, b).Close()
}

// refund returns an order's net capture (captured minus already refunded).
// With nothing to return it only confirms.
func (s *server) refund(ctx context.Context, tx pgx.Tx, cmd *paymentsv1.RefundPayment, _ consumer.Metadata) error {
	orderID := cmd.GetOrderId()
	var customerID *uuid.UUID
	var net int64
	if err := tx.QueryRow(ctx, `SELECT max(customer_id::text)::uuid,
			coalesce(sum(CASE kind WHEN 'CAPTURE' THEN amount_minor WHEN 'REFUND' THEN -amount_minor END), 0)
		FROM payments WHERE order_id = $1`, orderID).Scan(&customerID, &net); err != nil {
		return err
	}
	reply := &paymentsv1.PaymentRefunded{OrderId: orderID, Amount: rules.Money(0)}
	if customerID != nil {
		reply.CustomerId = customerID.String()
	}
	b := &pgx.Batch{}
	if net > 0 {
		if _, err := s.account(ctx, tx, customerID.String(), true); err != nil {
			return err
		}
		b.Queue(`UPDATE accounts SET balance_minor = balance_minor + $2 WHERE customer_id = $1`, *customerID, net)
		b.Queue(`INSERT INTO payments (payment_id, customer_id, order_id, kind, amount_minor) VALUES ($1, $2, $3, 'REFUND', $4)`,
			uuid.New(), *customerID, orderID, net)
		reply.Amount = rules.Money(net)
	}
	return s.send(ctx, tx, b, orderID, reply)
}
