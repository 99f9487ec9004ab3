package analytics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
)

// liveSchema holds the projections the RPCs read.
const liveSchema = "live"

// projectionTables are the tables of one set of projections, created for a
// rebuild like those of the live schema.
var projectionTables = []string{"applied", "orders", "outcomes", "sku_sales", "customers"}

// registrationShard is the shard of the row a registration creates: one
// row per customer, touched by nothing else.
const registrationShard = -1

// table names a projection table of schema.
func table(schema, name string) string { return pgx.Identifier{schema, name}.Sanitize() }

// markApplied records eventID in schema's ledger and reports whether it
// was new there.
func markApplied(ctx context.Context, tx pgx.Tx, schema, eventID string) (bool, error) {
	tag, err := tx.Exec(ctx, `INSERT INTO `+table(schema, "applied")+` (event_id) VALUES ($1) ON CONFLICT DO NOTHING`, eventID)
	if err != nil {
		return false, fmt.Errorf("record event %s in %s: %w", eventID, schema, err)
	}
	return tag.RowsAffected() == 1, nil
}

// projectRegistration makes the customer known to schema's summaries.
func projectRegistration(ctx context.Context, tx pgx.Tx, schema, eventID, customerID string) error {
	if fresh, err := markApplied(ctx, tx, schema, eventID); err != nil || !fresh {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO `+table(schema, "customers")+` (customer_id, shard, orders_confirmed, orders_cancelled, spent_minor)
		VALUES ($1, $2, 0, 0, 0) ON CONFLICT DO NOTHING`, customerID, registrationShard)
	if err != nil {
		return fmt.Errorf("project registration of %s into %s: %w", customerID, schema, err)
	}
	return nil
}

// orderChange is one order event as the projections see it.
type orderChange struct {
	eventID string
	orderID string
	shard   int32 // the event's partition
	// apply moves the order's fact.
	apply func(OrderFact) OrderFact
}

// projectOrder applies one order event to schema's projections.
func projectOrder(ctx context.Context, tx pgx.Tx, schema string, c orderChange) error {
	if fresh, err := markApplied(ctx, tx, schema, c.eventID); err != nil || !fresh {
		return err
	}
	before, err := loadFact(ctx, tx, schema, c.orderID)
	if err != nil {
		return err
	}
	after := c.apply(before)
	if err := saveFact(ctx, tx, schema, c.orderID, after); err != nil {
		return err
	}
	return applyDelta(ctx, tx, schema, c.shard, after.CustomerID, Change(before, after))
}

func loadFact(ctx context.Context, tx pgx.Tx, schema, orderID string) (OrderFact, error) {
	var f OrderFact
	var lines []byte
	err := tx.QueryRow(ctx, `SELECT customer_id::text, confirmed, cancelled, reason, lines, total_minor FROM `+table(schema, "orders")+`
		WHERE order_id = $1 FOR UPDATE`, orderID).Scan(&f.CustomerID, &f.Confirmed, &f.Cancelled, &f.Reason, &lines, &f.TotalMinor)
	if errors.Is(err, pgx.ErrNoRows) {
		return OrderFact{}, nil
	}
	if err != nil {
		return f, fmt.Errorf("read order %s from %s: %w", orderID, schema, err)
	}
	if err := json.Unmarshal(lines, &f.Lines); err != nil {
		return f, fmt.Errorf("decode lines of order %s: %w", orderID, err)
	}
	return f, nil
}

func saveFact(ctx context.Context, tx pgx.Tx, schema, orderID string, f OrderFact) error {
	lines, err := json.Marshal(f.Lines)
	if err != nil {
		return err
	}
	if f.Lines == nil {
		lines = []byte("[]")
	}
	_, err = tx.Exec(ctx, `INSERT INTO `+table(schema, "orders")+` (order_id, customer_id, confirmed, cancelled, reason, lines, total_minor)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (order_id) DO UPDATE SET customer_id = excluded.customer_id, confirmed = excluded.confirmed,
			cancelled = excluded.cancelled, reason = excluded.reason, lines = excluded.lines, total_minor = excluded.total_minor`,
		orderID, f.CustomerID, f.Confirmed, f.Cancelled, f.Reason, lines, f.TotalMinor)
	if err != nil {
		return fmt.Errorf("write order %s to %s: %w", orderID, schema, err)
	}
	return nil
}

// applyDelta adds d to schema's aggregates in shard, in a fixed order of
// rows.
func applyDelta(ctx context.Context, tx pgx.Tx, schema string, shard int32, customerID string, d Delta) error {
	keys := make([]OutcomeKey, 0, len(d.Outcomes))
	for k := range d.Outcomes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].Outcome != keys[j].Outcome {
			return keys[i].Outcome < keys[j].Outcome
		}
		return keys[i].Reason < keys[j].Reason
	})
	for _, k := range keys {
		o := d.Outcomes[k]
		if _, err := tx.Exec(ctx, `INSERT INTO `+table(schema, "outcomes")+` AS t (outcome, reason, shard, orders, revenue_minor)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT (outcome, reason, shard)
			DO UPDATE SET orders = t.orders + excluded.orders, revenue_minor = t.revenue_minor + excluded.revenue_minor`,
			string(k.Outcome), k.Reason, shard, o.Orders, o.RevenueMinor); err != nil {
			return fmt.Errorf("count outcome %s %s in %s: %w", k.Outcome, k.Reason, schema, err)
		}
	}
	for _, l := range d.sortedSKUs() {
		if _, err := tx.Exec(ctx, `INSERT INTO `+table(schema, "sku_sales")+` AS t (sku, shard, units, revenue_minor)
			VALUES ($1, $2, $3, $4) ON CONFLICT (sku, shard)
			DO UPDATE SET units = t.units + excluded.units, revenue_minor = t.revenue_minor + excluded.revenue_minor`,
			l.SKU, shard, l.Units, l.RevenueMin); err != nil {
			return fmt.Errorf("count sales of %s in %s: %w", l.SKU, schema, err)
		}
	}
	if c := d.Customer; c != (CustomerDelta{}) {
		if _, err := tx.Exec(ctx, `INSERT INTO `+table(schema, "customers")+` AS t (customer_id, shard, orders_confirmed, orders_cancelled, spent_minor)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT (customer_id, shard)
			DO UPDATE SET orders_confirmed = t.orders_confirmed + excluded.orders_confirmed,
				orders_cancelled = t.orders_cancelled + excluded.orders_cancelled, spent_minor = t.spent_minor + excluded.spent_minor`,
			customerID, shard, c.Confirmed, c.Cancelled, c.SpentMinor); err != nil {
			return fmt.Errorf("summarise customer %s in %s: %w", customerID, schema, err)
		}
	}
	return nil
}

// checksum digests schema's projections as the RPCs see them (shards
// summed, zero rows left out): two sets of projections with the same
// checksum answer every read the same.
func checksum(ctx context.Context, q pgx.Tx, schema string) (string, error) {
	parts := []string{
		`SELECT 'o|' || outcome || '|' || reason || '|' || sum(orders) || '|' || sum(revenue_minor) AS r FROM ` + table(schema, "outcomes") +
			` GROUP BY outcome, reason HAVING sum(orders) <> 0 OR sum(revenue_minor) <> 0`,
		`SELECT 's|' || sku || '|' || sum(units) || '|' || sum(revenue_minor) FROM ` + table(schema, "sku_sales") +
			` GROUP BY sku HAVING sum(units) <> 0 OR sum(revenue_minor) <> 0`,
		`SELECT 'c|' || customer_id || '|' || sum(orders_confirmed) || '|' || sum(orders_cancelled) || '|' || sum(spent_minor) FROM ` +
			table(schema, "customers") + ` GROUP BY customer_id`,
	}
	var sum string
	err := q.QueryRow(ctx, `SELECT md5(coalesce(string_agg(r, ',' ORDER BY r), '')) FROM (`+strings.Join(parts, " UNION ALL ")+`) AS rows`).Scan(&sum)
	if err != nil {
		return "", fmt.Errorf("checksum of %s: %w", schema, err)
	}
	return sum, nil
}
