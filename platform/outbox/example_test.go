package outbox_test

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/platform/outbox"
)

// confirm is the package doc's example, compiled (outbox_test.go runs
// writers against a real database).
func confirm(ctx context.Context, pool *pgxpool.Pool, w *outbox.Writer, id string, ev proto.Message) error {
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "UPDATE orders SET status = 'CONFIRMED' WHERE id = $1", id); err != nil {
			return err
		}
		return w.Write(ctx, tx, outbox.Event{AggregateType: "order", AggregateID: id, Message: ev})
	})
	return err
}

var _ = confirm
