// Package notifications tells customers what happened: a welcome on
// registration, and a message when an order is confirmed or cancelled.
package notifications

import (
	"context"
	"embed"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	moneyv1 "github.com/switchyard/switchyard/gen/go/switchyard/money/v1"
	notificationsv1 "github.com/switchyard/switchyard/gen/go/switchyard/notifications/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/pagetoken"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/validate"
	"github.com/switchyard/switchyard/platform/watch"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Notification kinds.
const (
	KindWelcome        = "WELCOME"
	KindOrderConfirmed = "ORDER_CONFIRMED"
	KindOrderCancelled = "ORDER_CANCELLED"
)

// customerLockClass namespaces the per-customer advisory locks of notify.
const customerLockClass = 7105

// changeChannel carries the customer id of every new notification.
const changeChannel = "switchyard_notification_created"

// Spec describes the notifications service.
func Spec() service.Spec {
	return service.Spec{Name: "notifications", Port: 50055, Migrations: migrations, Setup: Setup}
}

// Setup registers the NotificationService and the event handlers.
func Setup(env *service.Env) error {
	s := &server{env: env, changes: env.WatchHub(changeChannel)}
	notificationsv1.RegisterNotificationServiceServer(env.Server, s)
	consumer.Handle(env.Consumer, func(ctx context.Context, tx pgx.Tx, ev *customersv1.CustomerRegistered, md consumer.Metadata) error {
		c := ev.GetCustomer()
		return s.notify(ctx, tx, md, c.GetCustomerId(), c.GetCustomerId(), KindWelcome, "Welcome to Switchyard, "+c.GetName(),
			fmt.Sprintf("Hello %s, your account is ready. Top it up and place your first order.", c.GetName()))
	})
	consumer.Handle(env.Consumer, func(ctx context.Context, tx pgx.Tx, ev *ordersv1.OrderConfirmed, md consumer.Metadata) error {
		o := ev.GetOrder()
		return s.notify(ctx, tx, md, o.GetCustomerId(), o.GetOrderId(), KindOrderConfirmed, "Order "+o.GetOrderId()+" confirmed",
			fmt.Sprintf("Your order of %d item(s) for %s is confirmed.", len(o.GetItems()), money(o.GetTotal())))
	})
	consumer.Handle(env.Consumer, func(ctx context.Context, tx pgx.Tx, ev *ordersv1.OrderCancelled, md consumer.Metadata) error {
		o := ev.GetOrder()
		return s.notify(ctx, tx, md, o.GetCustomerId(), o.GetOrderId(), KindOrderCancelled, "Order "+o.GetOrderId()+" cancelled",
			// Said of every cancellation: a confirmed order cancelled later,
			// or a capture that came too late, was charged and refunded.
			fmt.Sprintf("Your order was cancelled (%s). Nothing is charged for it: any payment taken is being refunded.", o.GetFailureReason()))
	})
	return nil
}

func money(m *moneyv1.Money) string {
	return fmt.Sprintf("%d.%02d %s", m.GetAmountMinor()/100, m.GetAmountMinor()%100, m.GetCurrency())
}

// notify records one notification per event: the inbox already rejects a
// redelivery, and the unique event_id makes that doubly sure.
//
// A customer's notifications are written one transaction at a time (a
// transaction-scoped advisory lock per customer, taken before the row gets
// its seq): WatchNotifications resumes after the highest seq it has sent,
// so a seq must never become visible after a higher one of the same
// customer, which two concurrent writers could otherwise cause. The
// customer's streams learn of it once the transaction commits.
func (s *server) notify(ctx context.Context, tx pgx.Tx, md consumer.Metadata, customerID, about, kind, subject, body string) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, customerLockClass, customerID); err != nil {
		return fmt.Errorf("serialise notifications of %s: %w", customerID, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO notifications (notification_id, customer_id, about, kind, subject, body, event_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING`, uuid.New(), customerID, about, kind, subject, body, md.ID); err != nil {
		return err
	}
	md.AfterCommit(func(context.Context) { s.changes.Changed(customerID) })
	return nil
}

type server struct {
	notificationsv1.UnimplementedNotificationServiceServer
	env     *service.Env
	changes *watch.Hub
}

// list reads through the watch hub's pool: only watch streams call it.
func (s *server) list(ctx context.Context, customerID string, afterSeq int64) ([]*notificationsv1.Notification, int64, error) {
	rows, err := s.changes.DB().Query(ctx, `SELECT seq, notification_id::text, kind, subject, body, event_id::text, create_time
		FROM notifications WHERE customer_id = $1 AND seq > $2 ORDER BY seq LIMIT 1000`, customerID, afterSeq)
	if err != nil {
		return nil, afterSeq, err
	}
	last := afterSeq
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*notificationsv1.Notification, error) {
		n := &notificationsv1.Notification{CustomerId: customerID}
		var at time.Time
		if err := r.Scan(&last, &n.NotificationId, &n.Kind, &n.Subject, &n.Body, &n.EventId, &at); err != nil {
			return nil, err
		}
		n.CreateTime = timestamppb.New(at)
		return n, nil
	})
	return list, last, err
}

func (s *server) ListNotifications(ctx context.Context, req *notificationsv1.ListNotificationsRequest) (*notificationsv1.ListNotificationsResponse, error) {
	var v validate.Violations
	v.UUID("customer_id", req.GetCustomerId())
	v.Range("page_size", int64(req.GetPageSize()), 0, 1000)
	// Pages follow seq, the order the customer's notifications committed
	// in: the notifications of one transaction share their create_time,
	// and a transaction that began earlier may commit later.
	var after int64
	if t := req.GetPageToken(); t != "" {
		seq, ok := pagetoken.DecodeSeq(t)
		if !ok {
			v.Add("page_token", "is not a token returned by ListNotifications")
		}
		after = seq
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = 100
	}
	rows, err := s.env.Pool.Query(ctx, `SELECT seq, notification_id::text, kind, subject, body, event_id::text, create_time
		FROM notifications WHERE customer_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`, req.GetCustomerId(), after, size+1)
	if err != nil {
		return nil, err
	}
	var seqs []int64
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*notificationsv1.Notification, error) {
		n := &notificationsv1.Notification{CustomerId: req.GetCustomerId()}
		var seq int64
		var at time.Time
		if err := r.Scan(&seq, &n.NotificationId, &n.Kind, &n.Subject, &n.Body, &n.EventId, &at); err != nil {
			return nil, err
		}
		seqs = append(seqs, seq)
		n.CreateTime = timestamppb.New(at)
		return n, nil
	})
	if err != nil {
		return nil, err
	}
	resp := &notificationsv1.ListNotificationsResponse{Notifications: list}
	if len(list) > size {
		resp.Notifications = list[:size]
		resp.NextPageToken = pagetoken.EncodeSeq(seqs[size-1])
	}
	return resp, nil
}

func (s *server) WatchNotifications(req *notificationsv1.WatchNotificationsRequest, stream notificationsv1.NotificationService_WatchNotificationsServer) error {
	var v validate.Violations
	v.UUID("customer_id", req.GetCustomerId())
	if err := v.Err(); err != nil {
		return err
	}
	ctx := stream.Context()
	var after int64
	return s.changes.Follow(ctx, req.GetCustomerId(), s.env.Config.WatchRecheck, s.env.Stopping(), func() (bool, error) {
		list, last, err := s.list(ctx, req.GetCustomerId(), after)
		if err != nil {
			return false, err
		}
		for _, n := range list {
			if err := stream.Send(&notificationsv1.WatchNotificationsResponse{Notification: n}); err != nil {
				return false, err
			}
		}
		after = last
		return false, nil
	})
}
