package orders

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	paymentsv1 "github.com/switchyard/switchyard/gen/go/switchyard/payments/v1"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/outbox"
)

// saga is an order's saga state, read under a row lock.
type saga struct {
	orderID, customerID string
	status, step        string
	total               int64
}

func lockSaga(ctx context.Context, tx pgx.Tx, orderID string) (saga, error) {
	s := saga{orderID: orderID}
	err := tx.QueryRow(ctx, `SELECT customer_id::text, status, saga_step, total_minor FROM orders WHERE order_id = $1 FOR UPDATE`, orderID).
		Scan(&s.customerID, &s.status, &s.step, &s.total)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, status.Errorf(codes.NotFound, "order %s not found", orderID)
	}
	return s, err
}

func (s *server) emit(ctx context.Context, tx pgx.Tx, orderID string, msgs ...proto.Message) error {
	return s.env.Outbox.Write(ctx, tx, events(orderID, msgs)...)
}

// events wraps an order's messages for the outbox. Everything orders
// emits, saga commands and order events, declares the aggregate "order":
// keyed by order id, each order's messages keep their order.
func events(orderID string, msgs []proto.Message) []outbox.Event {
	out := make([]outbox.Event, len(msgs))
	for i, m := range msgs {
		out[i] = outbox.Event{AggregateID: orderID, Message: m}
	}
	return out
}

// lockForEvent locks the order an event is about. An order not found is
// retried, not dead-lettered at once: logical
// decoding streams a transaction as soon as its commit record is flushed,
// a moment before the committing session makes it visible to others, so on
// a busy machine a reply can overtake the visibility of the CreateOrder
// that caused it. After the consumer's attempts it is dead-lettered.
func lockForEvent(ctx context.Context, tx pgx.Tx, orderID string) (saga, error) {
	return lockSaga(ctx, tx, orderID)
}

func (st saga) awaiting(step string) bool { return st.status == statusPending && st.step == step }

// queueStep queues the move of a pending order to its next step, with a
// fresh deadline.
func (s *server) queueStep(b *pgx.Batch, orderID, step string) {
	b.Queue(`UPDATE orders SET saga_step = $2, saga_deadline = now() + make_interval(secs => $3),
		version = version + 1, update_time = now() WHERE order_id = $1`, orderID, step, s.opts.StepTimeout.Seconds())
}

// finish makes an order terminal and emits OrderConfirmed or OrderCancelled
// after the given commands: b's statements, the update and the read of the
// order go in one round trip, the events in a second.
func (s *server) finish(ctx context.Context, tx pgx.Tx, b *pgx.Batch, orderID, status, reason string, commands ...proto.Message) error {
	b.Queue(`UPDATE orders SET status = $2, failure_reason = $3, saga_step = 'DONE', saga_deadline = NULL,
		version = version + 1, update_time = now() WHERE order_id = $1`, orderID, status, reason)
	orders, err := sendAndLoad(ctx, tx, b, []string{orderID})
	if err != nil {
		return err
	}
	o := orders[0]
	s.metrics.observe(status, reason, o.GetUpdateTime().AsTime().Sub(o.GetCreateTime().AsTime()))
	var event proto.Message = &ordersv1.OrderCancelled{Order: o}
	if status == statusConfirmed {
		event = &ordersv1.OrderConfirmed{Order: o}
	}
	return s.emit(ctx, tx, orderID, append(commands, event)...)
}

// apply carries out the saga's decision about h (see decide) in tx, after
// the statements the caller queued in b (nil for none): a step that does
// not end the order is one round trip. It reports whether the order
// changed, which the caller announces to the order's watchers once tx has
// committed (the watch hub's Changed).
func (s *server) apply(ctx context.Context, tx pgx.Tx, b *pgx.Batch, st saga, h happening) (changed bool, err error) {
	if b == nil {
		b = &pgx.Batch{}
	}
	d := decide(st, h)
	if d.status != "" {
		return true, s.finish(ctx, tx, b, st.orderID, d.status, d.reason, d.commands...)
	}
	if d.step != "" {
		s.queueStep(b, st.orderID, d.step)
	}
	if err := s.env.Outbox.Queue(ctx, b, events(st.orderID, d.commands)...); err != nil {
		return false, err
	}
	if b.Len() == 0 {
		return false, nil
	}
	return d.step != "", tx.SendBatch(ctx, b).Close()
}

// applyEvent is apply for an event's handler: the order's watchers learn
// of a change once the consumer's transaction commits.
func (s *server) applyEvent(ctx context.Context, tx pgx.Tx, b *pgx.Batch, st saga, h happening, md consumer.Metadata) error {
	changed, err := s.apply(ctx, tx, b, st, h)
	if err == nil && changed {
		md.AfterCommit(func(context.Context) { s.changes.Changed(st.orderID) })
	}
	return err
}

func (s *server) onStockReserved(ctx context.Context, tx pgx.Tx, ev *inventoryv1.StockReserved, md consumer.Metadata) error {
	st, err := lockForEvent(ctx, tx, ev.GetOrderId())
	if err != nil {
		return err
	}
	total := ev.GetTotal().GetAmountMinor()
	b := &pgx.Batch{}
	if st.awaiting(stepReserving) {
		if total <= 0 {
			// Prices are positive, so a reservation always has something to
			// charge; an order must never confirm for free.
			return consumer.Permanent(fmt.Errorf("order %s: reserved total %d is not positive", st.orderID, total))
		}
		skus := make([]string, len(ev.GetLines()))
		prices := make([]int64, len(ev.GetLines()))
		for i, l := range ev.GetLines() {
			skus[i], prices[i] = l.GetSku(), l.GetUnitPrice().GetAmountMinor()
		}
		// The prices and the total go in the same round trip as the step.
		b.Queue(`UPDATE order_items i SET unit_price_minor = l.price FROM unnest($2::text[], $3::bigint[]) AS l(sku, price)
			WHERE i.order_id = $1 AND i.sku = l.sku`, st.orderID, skus, prices)
		b.Queue(`UPDATE orders SET total_minor = $2 WHERE order_id = $1`, st.orderID, total)
	}
	return s.applyEvent(ctx, tx, b, st, happening{input: stockReserved, total: total}, md)
}

func (s *server) onStockRejected(ctx context.Context, tx pgx.Tx, ev *inventoryv1.StockRejected, md consumer.Metadata) error {
	st, err := lockForEvent(ctx, tx, ev.GetOrderId())
	if err != nil {
		return err
	}
	return s.applyEvent(ctx, tx, nil, st, happening{input: stockRejected, reason: ev.GetReason()}, md)
}

func (s *server) onPaymentCaptured(ctx context.Context, tx pgx.Tx, ev *paymentsv1.PaymentCaptured, md consumer.Metadata) error {
	st, err := lockForEvent(ctx, tx, ev.GetOrderId())
	if err != nil {
		return err
	}
	return s.applyEvent(ctx, tx, nil, st, happening{input: paymentCaptured}, md)
}

func (s *server) onPaymentDeclined(ctx context.Context, tx pgx.Tx, ev *paymentsv1.PaymentDeclined, md consumer.Metadata) error {
	st, err := lockForEvent(ctx, tx, ev.GetOrderId())
	if err != nil {
		return err
	}
	return s.applyEvent(ctx, tx, nil, st, happening{input: paymentDeclined, reason: ev.GetReason()}, md)
}

// sweepDeadlines cancels, with TIMEOUT, orders whose current step has had
// no reply before its deadline. SKIP LOCKED lets several replicas sweep.
func (s *server) sweepDeadlines(ctx context.Context) error {
	tick := time.NewTicker(s.opts.SweepInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		for {
			n, err := s.sweepOnce(ctx)
			if err != nil {
				if ctx.Err() == nil {
					s.env.Logger.Warn("sweep saga deadlines", "error", err)
				}
				break
			}
			if n == 0 {
				break
			}
		}
	}
}

func (s *server) sweepOnce(ctx context.Context) (int, error) {
	var changed []string
	n := 0
	err := pgx.BeginFunc(ctx, s.env.Pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT order_id::text FROM orders WHERE status = 'PENDING' AND saga_deadline < now()
			ORDER BY saga_deadline LIMIT 50 FOR UPDATE SKIP LOCKED`)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, id := range ids {
			st, err := lockSaga(ctx, tx, id)
			if err != nil {
				return err
			}
			s.env.Logger.Info("saga step timed out; compensating", "order_id", id, "step", st.step)
			c, err := s.apply(ctx, tx, nil, st, happening{input: stepTimedOut, reason: fmt.Sprintf("no reply while %s", st.step)})
			if err != nil {
				return err
			}
			if c {
				changed = append(changed, id)
			}
		}
		n = len(ids)
		return nil
	})
	if err == nil {
		for _, id := range changed {
			s.changes.Changed(id)
		}
	}
	return n, err
}
