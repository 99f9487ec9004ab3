package consumer_test

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/transport"
)

// consume is the package doc's example, compiled (consumer_test.go runs
// consumers against a real database and broker).
func consume(ctx context.Context, tr transport.Transport, pool *pgxpool.Pool) error {
	c, err := consumer.New(consumer.Config{Transport: tr, Group: "payments", Topics: []string{"switchyard.order"}, Pool: pool})
	if err != nil {
		return err
	}
	consumer.Handle(c, func(ctx context.Context, tx pgx.Tx, ev *wrapperspb.StringValue, md consumer.Metadata) error {
		// Change tables and write outbox events through tx.
		_, err := tx.Exec(ctx, "INSERT INTO seen (event_id, value) VALUES ($1, $2)", md.ID, ev.GetValue())
		return err
	})
	return c.Run(ctx)
}

var _ = consume
