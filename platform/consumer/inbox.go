package consumer

import (
	"context"

	"github.com/switchyard/switchyard/platform/backoff"
	"github.com/switchyard/switchyard/platform/migrate"
)

// InboxSchema creates the inbox table and the table of partition ownership
// epochs that fences former owners (transports with leases).
const InboxSchema = `
CREATE TABLE IF NOT EXISTS inbox (
	consumer_group text NOT NULL,
	event_id       uuid NOT NULL,
	event_type     text NOT NULL,
	processed_at   timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (consumer_group, event_id)
);
CREATE INDEX IF NOT EXISTS inbox_processed_at_idx ON inbox (processed_at);
CREATE TABLE IF NOT EXISTS consumer_epochs (
	consumer_group text NOT NULL,
	topic          text NOT NULL,
	partition      int NOT NULL,
	epoch          bigint NOT NULL,
	PRIMARY KEY (consumer_group, topic, partition)
);
`

// Migrate creates the inbox tables if they do not exist.
func Migrate(ctx context.Context, db migrate.Querier) error {
	return migrate.EnsureTable(ctx, db, "consumer_epochs", InboxSchema)
}

func (c *Consumer) pruneLoop(ctx context.Context) {
	for {
		if n, err := c.Prune(ctx); err != nil && ctx.Err() == nil {
			c.cfg.Logger.Warn("prune inbox", "error", err)
		} else if n > 0 {
			c.cfg.Logger.Info("pruned inbox", "rows", n)
		}
		if !backoff.Sleep(ctx, c.cfg.PruneInterval) {
			return
		}
	}
}

// Prune deletes this group's inbox rows older than InboxRetention and
// returns how many it deleted. Run calls it every PruneInterval.
func (c *Consumer) Prune(ctx context.Context) (int64, error) {
	tag, err := c.cfg.Pool.Exec(ctx, `DELETE FROM inbox WHERE consumer_group = $1 AND processed_at < now() - make_interval(secs => $2)`,
		c.cfg.Group, c.cfg.InboxRetention.Seconds())
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}
