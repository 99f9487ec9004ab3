package orders

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	"github.com/switchyard/switchyard/platform/transport"
)

// saga is an order's saga state, read under a row lock.
type saga struct {
	orderID, customerID string
	status, step        string
	total               int64
}

// lockSaga locks an order and reads its saga state. An unknown order is
// NOT_FOUND: a reply about one is retried by the consumer, then
// dead-lettered.
func lockSaga(ctx context.Context, tx pgx.Tx, orderID string) (saga, error) {
	s := saga{orderID: orderID}
	err := tx.QueryRow(ctx, `SELECT customer_id::text, status, saga_step, total_minor FROM orders WHERE order_id = $1 FOR UPDATE`, orderID).
		Scan(&s.customerID, &s.status, &s.step, &s.total)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, status.Errorf(codes.NotFound, "order %s not found", orderID)
	}
	if err != nil {
		return s, fmt.Errorf("lock order %s: %w", orderID, err)
	}
	return s, nil
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

func (st saga) awaiting(step string) bool { return st.status == statusPending && st.step == step }

// queueStep queues the move of a pending order to its next step, with a
// fresh deadline.
func (s *server) queueStep(b *pgx.Batch, orderID, step string) {
	b.Queue(`UPDATE orders SET saga_step = $2, saga_deadline = now() + make_interval(secs => $3),
		version = version + 1, update_time = greatest(update_time, now()) WHERE order_id = $1`, orderID, step, s.opts.StepTimeout.Seconds())
}

// outcome is what apply did to an order, for [server.committed] once its
// transaction has committed.
type outcome struct {
	orderID string
	changed bool    // the order's watchers are told
	ended   *ending // the saga ended: it is counted
}

// ending is how a saga ended, for the saga metrics.
type ending struct {
	status, reason string
	took           time.Duration
}

// committed tells the order's watchers that it changed and counts a saga
// that ended. Only after the commit: a transaction that rolls back (a
// consumer batch is then applied again one event at a time) must count
// nothing.
func (s *server) committed(o outcome) {
	if o.changed {
		s.changes.Changed(o.orderID)
	}
	if e := o.ended; e != nil {
		s.metrics.observe(e.status, e.reason, e.took)
	}
}

// finish makes an order terminal and emits OrderConfirmed or OrderCancelled
// after the given commands: b's statements, the update and the read of the
// order go in one round trip, the events in a second.
func (s *server) finish(ctx context.Context, tx pgx.Tx, b *pgx.Batch, orderID, status, reason string, commands ...proto.Message) (*ending, error) {
	b.Queue(`UPDATE orders SET status = $2, failure_reason = $3, saga_step = 'DONE', saga_deadline = NULL,
		version = version + 1, update_time = greatest(update_time, now()) WHERE order_id = $1`, orderID, status, reason)
	orders, err := sendAndLoad(ctx, tx, b, []string{orderID})
	if err != nil {
		return nil, fmt.Errorf("end order %s: %w", orderID, err)
	}
	o := orders[0]
	var event proto.Message = &ordersv1.OrderCancelled{Order: o}
	if status == statusConfirmed {
		event = &ordersv1.OrderConfirmed{Order: o}
	}
	if err := s.emit(ctx, tx, orderID, append(commands, event)...); err != nil {
		return nil, fmt.Errorf("end order %s: %w", orderID, err)
	}
	return &ending{status: status, reason: reason, took: o.GetUpdateTime().AsTime().Sub(o.GetCreateTime().AsTime())}, nil
}

// apply carries out the saga's decision about h (see decide) in tx, after
// the statements the caller queued in b (nil for none): a step that does
// not end the order is one round trip. The caller passes what it returns
// to committed once tx has committed.
func (s *server) apply(ctx context.Context, tx pgx.Tx, b *pgx.Batch, st saga, h happening) (outcome, error) {
	out := outcome{orderID: st.orderID}
	if b == nil {
		b = &pgx.Batch{}
	}
	d := decide(st, h)
	if d.status != "" {
		e, err := s.finish(ctx, tx, b, st.orderID, d.status, d.reason, d.commands...)
		if err != nil {
			return out, err
		}
		out.changed = true
		if st.status == statusPending { // not a confirmed order cancelled later
			out.ended = e
		}
		return out, nil
	}
	if d.step != "" {
		s.queueStep(b, st.orderID, d.step)
	}
	if err := s.env.Outbox.Queue(ctx, b, events(st.orderID, d.commands)...); err != nil {
		return out, err
	}
	if b.Len() == 0 {
		return out, nil
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return out, fmt.Errorf("order %s: %w", st.orderID, err)
	}
	out.changed = d.step != ""
	return out, nil
}

// applyEvent is apply for an event's handler: what it did is announced and
// counted once the consumer's transaction commits.
func (s *server) applyEvent(ctx context.Context, tx pgx.Tx, b *pgx.Batch, st saga, h happening, md consumer.Metadata) error {
	out, err := s.apply(ctx, tx, b, st, h)
	if err == nil && out.changed {
		md.AfterCommit(func(context.Context) { s.committed(out) })
	}
	return err
}

func (s *server) onStockReserved(ctx context.Context, tx pgx.Tx, ev *inventoryv1.StockReserved, md consumer.Metadata) error {
	st, err := lockSaga(ctx, tx, ev.GetOrderId())
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

// The failure reasons a participant's refusal may carry: an order's
// failure_reason is one of a fixed set, which clients switch on.
var (
	stockRejections  = []string{"OUT_OF_STOCK", "UNKNOWN_SKU"}
	paymentDeclines  = []string{"INSUFFICIENT_FUNDS", "ACCOUNT_NOT_FOUND"}
	errUnknownReason = errors.New("unknown failure reason")
)

// checkReason refuses a reason outside allowed for good: the reply is
// dead-lettered, where an operator sees it, and the order ends by its
// step's deadline (TIMEOUT) rather than with a reason no client knows.
func checkReason(orderID, reason string, allowed []string) error {
	if slices.Contains(allowed, reason) {
		return nil
	}
	return consumer.Permanent(fmt.Errorf("order %s: %w %q, want one of %v", orderID, errUnknownReason, reason, allowed))
}

func (s *server) onStockRejected(ctx context.Context, tx pgx.Tx, ev *inventoryv1.StockRejected, md consumer.Metadata) error {
	if err := checkReason(ev.GetOrderId(), ev.GetReason(), stockRejections); err != nil {
		return err
	}
	st, err := lockSaga(ctx, tx, ev.GetOrderId())
	if err != nil {
		return err
	}
	return s.applyEvent(ctx, tx, nil, st, happening{input: stockRejected, reason: ev.GetReason()}, md)
}

func (s *server) onPaymentCaptured(ctx context.Context, tx pgx.Tx, ev *paymentsv1.PaymentCaptured, md consumer.Metadata) error {
	st, err := lockSaga(ctx, tx, ev.GetOrderId())
	if err != nil {
		return err
	}
	return s.applyEvent(ctx, tx, nil, st, happening{input: paymentCaptured}, md)
}

func (s *server) onPaymentDeclined(ctx context.Context, tx pgx.Tx, ev *paymentsv1.PaymentDeclined, md consumer.Metadata) error {
	if err := checkReason(ev.GetOrderId(), ev.GetReason(), paymentDeclines); err != nil {
		return err
	}
	st, err := lockSaga(ctx, tx, ev.GetOrderId())
	if err != nil {
		return err
	}
	return s.applyEvent(ctx, tx, nil, st, happening{input: paymentDeclined, reason: ev.GetReason()}, md)
}

// sweepDeadlines cancels, with TIMEOUT, orders whose current step has had
// no reply before its deadline. SKIP LOCKED lets several replicas sweep.
func (s *server) sweepDeadlines(ctx context.Context) error {
	s.awaitReplies(ctx)
	tick := time.NewTicker(s.opts.SweepInterval)
	defer tick.Stop()
	sweeps := failures{start: "cannot sweep saga deadlines; retrying", end: "sweeping saga deadlines again"}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		for {
			n, err := s.sweepOnce(ctx)
			if ctx.Err() == nil {
				sweeps.note(s.env.Logger, err)
			}
			if err != nil || n == 0 {
				break
			}
		}
	}
}

// awaitReplies holds the first sweep until the consumer group has applied
// the replies that had arrived when this process started. After orders was
// down (or stopped consuming) for longer than a step's deadline, the steps
// whose replies came meanwhile had a reply in time: sweeping at once would
// cancel and compensate them while their replies wait to be read. The wait
// is bounded by one StepTimeout, so that a group that cannot make progress
// does not hold every timeout back for good.
func (s *server) awaitReplies(ctx context.Context) {
	limit := time.Now().Add(s.opts.StepTimeout)
	var ends transport.Ends // where the replies ended at the start
	var backlog int64
	var err error
	for {
		if ends == nil {
			ends, err = s.env.Ends(ctx, s.env.Consumer)
		}
		if ends != nil {
			if backlog, err = s.env.BacklogBefore(ctx, s.env.Consumer, ends); err == nil && backlog == 0 {
				return
			}
		}
		if time.Now().After(limit) {
			s.env.Logger.Warn("replies that arrived before the start are not all applied; sweeping saga deadlines anyway",
				"waited", s.opts.StepTimeout, "backlog", backlog, "error", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.opts.SweepInterval):
		}
	}
}

func (s *server) sweepOnce(ctx context.Context) (int, error) {
	var done []outcome
	n := 0
	err := pgx.BeginFunc(ctx, s.env.Pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT order_id::text FROM orders WHERE status = 'PENDING' AND saga_deadline < now()
			ORDER BY saga_deadline LIMIT 50 FOR UPDATE SKIP LOCKED`)
		if err != nil {
			return fmt.Errorf("find expired steps: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("find expired steps: %w", err)
		}
		for _, id := range ids {
			st, err := lockSaga(ctx, tx, id)
			if err != nil {
				return err
			}
			s.env.Logger.Info("saga step timed out; compensating", "order_id", id, "step", st.step)
			out, err := s.apply(ctx, tx, nil, st, happening{input: stepTimedOut, reason: fmt.Sprintf("no reply while %s", st.step)})
			if err != nil {
				return err
			}
			done = append(done, out)
		}
		n = len(ids)
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, out := range done {
		s.committed(out)
	}
	return n, nil
}
