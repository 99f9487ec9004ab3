package analytics

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
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

// change is one event as the projections see it: a registration
// (customerID set) or an order event (order set).
type change struct {
	eventID    string
	customerID string
	order      *orderChange
}

// orderChange is one order event as the projections see it.
type orderChange struct {
	eventID string
	orderID string
	shard   int32 // the event's partition
	// apply moves the order's fact.
	apply func(OrderFact) OrderFact
}

// project applies changes, in order, to schema's projections, each event
// once (schema's ledger, applied, skips those it has seen), in a fixed
// number of statements however many there are: the replay applies a
// batch of up to replayBatch events at a time, the live group what one
// transaction of its consumer gathered.
func project(ctx context.Context, tx pgx.Tx, schema string, changes []change) error {
	if len(changes) == 0 {
		return nil
	}
	fresh, err := markApplied(ctx, tx, schema, changes)
	if err != nil {
		return err
	}
	var registered []string
	var orders []*orderChange
	for _, c := range changes {
		if !fresh[c.eventID] {
			continue
		}
		delete(fresh, c.eventID) // the same event twice counts once
		if c.order != nil {
			orders = append(orders, c.order)
		} else {
			registered = append(registered, c.customerID)
		}
	}
	if len(registered) > 0 {
		// One row per customer, touched by nothing else.
		if _, err := tx.Exec(ctx, `INSERT INTO `+table(schema, "customers")+` (customer_id, shard, orders_confirmed, orders_cancelled, spent_minor)
			SELECT id, $2, 0, 0, 0 FROM unnest($1::uuid[]) AS id ON CONFLICT DO NOTHING`, registered, registrationShard); err != nil {
			return fmt.Errorf("project %d registrations into %s: %w", len(registered), schema, err)
		}
	}
	if len(orders) == 0 {
		return nil
	}
	facts, err := loadFacts(ctx, tx, schema, orders)
	if err != nil {
		return err
	}
	var sum deltaSum
	for _, c := range orders {
		before := facts[c.orderID]
		after := c.apply(before)
		facts[c.orderID] = after
		sum.add(c.shard, after.CustomerID, Change(before, after))
	}
	if err := saveFacts(ctx, tx, schema, facts); err != nil {
		return err
	}
	return sum.write(ctx, tx, schema)
}

// markApplied records the events in schema's ledger and returns those new
// there.
func markApplied(ctx context.Context, tx pgx.Tx, schema string, changes []change) (map[string]bool, error) {
	ids := make([]string, len(changes))
	for i, c := range changes {
		ids[i] = c.eventID
	}
	rows, err := tx.Query(ctx, `INSERT INTO `+table(schema, "applied")+` (event_id) SELECT unnest($1::uuid[])
		ON CONFLICT DO NOTHING RETURNING event_id::text`, ids)
	if err != nil {
		return nil, fmt.Errorf("record %d events in %s: %w", len(ids), schema, err)
	}
	fresh := map[string]bool{}
	var id string
	if _, err := pgx.ForEachRow(rows, []any{&id}, func() error { fresh[id] = true; return nil }); err != nil {
		return nil, fmt.Errorf("record %d events in %s: %w", len(ids), schema, err)
	}
	return fresh, nil
}

// loadFacts reads and locks the facts of the changes' orders (in order_id
// order, so that two transactions lock them in the same order); orders
// not seen yet are absent.
//
// FOR UPDATE locks only rows that exist, so first a transaction lock per
// order, taken in order_id order: two transactions that both meet an order
// for the first time (during a rebuild, the replay and the live group both
// write the new tables) would otherwise each start from nothing, and the
// later commit would overwrite the earlier's row, counting the order both
// ways. With the lock the second waits, then reads the first's row.
func loadFacts(ctx context.Context, tx pgx.Tx, schema string, orders []*orderChange) (map[string]OrderFact, error) {
	ids := make([]string, len(orders))
	for i, c := range orders {
		ids[i] = c.orderID
	}
	// Volatile functions in the select list run after ORDER BY, in its order.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1 || o::text, 0)) FROM unnest($2::uuid[]) AS o ORDER BY o`, schema, ids); err != nil {
		return nil, fmt.Errorf("lock %d orders of %s: %w", len(ids), schema, err)
	}
	rows, err := tx.Query(ctx, `SELECT order_id::text, customer_id::text, confirmed, cancelled, reason, lines, total_minor FROM `+table(schema, "orders")+`
		WHERE order_id = ANY($1::uuid[]) ORDER BY order_id FOR UPDATE`, ids)
	if err != nil {
		return nil, fmt.Errorf("read %d orders from %s: %w", len(ids), schema, err)
	}
	facts := map[string]OrderFact{}
	var id string
	var f OrderFact
	var lines []byte
	_, err = pgx.ForEachRow(rows, []any{&id, &f.CustomerID, &f.Confirmed, &f.Cancelled, &f.Reason, &lines, &f.TotalMinor}, func() error {
		f.Lines = nil
		if err := json.Unmarshal(lines, &f.Lines); err != nil {
			return fmt.Errorf("decode lines of order %s: %w", id, err)
		}
		facts[id] = f
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read %d orders from %s: %w", len(ids), schema, err)
	}
	return facts, nil
}

// saveFacts writes the orders' facts, in one statement.
func saveFacts(ctx context.Context, tx pgx.Tx, schema string, facts map[string]OrderFact) error {
	n := len(facts)
	ids, customers, reasons, lines := make([]string, 0, n), make([]string, 0, n), make([]string, 0, n), make([]string, 0, n)
	confirmed, cancelled, totals := make([]bool, 0, n), make([]bool, 0, n), make([]int64, 0, n)
	for _, id := range sortedKeys(facts) {
		f := facts[id]
		l := []byte("[]")
		if f.Lines != nil {
			var err error
			if l, err = json.Marshal(f.Lines); err != nil {
				return err
			}
		}
		ids, customers, reasons, lines = append(ids, id), append(customers, f.CustomerID), append(reasons, f.Reason), append(lines, string(l))
		confirmed, cancelled, totals = append(confirmed, f.Confirmed), append(cancelled, f.Cancelled), append(totals, f.TotalMinor)
	}
	_, err := tx.Exec(ctx, `INSERT INTO `+table(schema, "orders")+` (order_id, customer_id, confirmed, cancelled, reason, lines, total_minor)
		SELECT o, c, cf, cn, r, l::jsonb, t FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::bool[], $5::text[], $6::text[], $7::bigint[]) AS u(o, c, cf, cn, r, l, t)
		ON CONFLICT (order_id) DO UPDATE SET customer_id = excluded.customer_id, confirmed = excluded.confirmed,
			cancelled = excluded.cancelled, reason = excluded.reason, lines = excluded.lines, total_minor = excluded.total_minor`,
		ids, customers, confirmed, cancelled, reasons, lines, totals)
	if err != nil {
		return fmt.Errorf("write %d orders to %s: %w", n, schema, err)
	}
	return nil
}

// deltaSum adds up the deltas of several order events, per shard. A row
// any event's delta names is written even if the sum is zero, as one
// event at a time would: a customer's summary exists once any order of
// theirs counted.
type deltaSum struct {
	outcomes  map[shardKey[OutcomeKey]]OutcomeDelta
	skus      map[shardKey[string]]Line
	customers map[shardKey[string]]CustomerDelta
}

// shardKey is a row of an aggregate table: its key and shard.
type shardKey[K comparable] struct {
	key   K
	shard int32
}

func (s *deltaSum) add(shard int32, customerID string, d Delta) {
	if s.outcomes == nil {
		s.outcomes, s.skus, s.customers = map[shardKey[OutcomeKey]]OutcomeDelta{}, map[shardKey[string]]Line{}, map[shardKey[string]]CustomerDelta{}
	}
	for k, o := range d.Outcomes {
		t := s.outcomes[shardKey[OutcomeKey]{k, shard}]
		t.Orders += o.Orders
		t.RevenueMinor += o.RevenueMinor
		s.outcomes[shardKey[OutcomeKey]{k, shard}] = t
	}
	for sku, l := range d.SKUs {
		t := s.skus[shardKey[string]{sku, shard}]
		t.Units += l.Units
		t.RevenueMin += l.RevenueMin
		s.skus[shardKey[string]{sku, shard}] = t
	}
	if c := d.Customer; c != (CustomerDelta{}) {
		t := s.customers[shardKey[string]{customerID, shard}]
		t.Confirmed += c.Confirmed
		t.Cancelled += c.Cancelled
		t.SpentMinor += c.SpentMinor
		s.customers[shardKey[string]{customerID, shard}] = t
	}
}

// write adds the sums to schema's aggregates, one statement per table,
// rows in a fixed order (a fixed lock order keeps concurrent writers from
// deadlocking).
func (s *deltaSum) write(ctx context.Context, tx pgx.Tx, schema string) error {
	if len(s.outcomes) > 0 {
		keys := sortedShardKeys(s.outcomes, func(a, b OutcomeKey) int {
			return cmp.Or(cmp.Compare(a.Outcome, b.Outcome), cmp.Compare(a.Reason, b.Reason))
		})
		var outcomes, reasons []string
		var shards []int32
		var orders, revenue []int64
		for _, k := range keys {
			o := s.outcomes[k]
			outcomes, reasons, shards = append(outcomes, string(k.key.Outcome)), append(reasons, k.key.Reason), append(shards, k.shard)
			orders, revenue = append(orders, o.Orders), append(revenue, o.RevenueMinor)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+table(schema, "outcomes")+` AS t (outcome, reason, shard, orders, revenue_minor)
			SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::bigint[]) ON CONFLICT (outcome, reason, shard)
			DO UPDATE SET orders = t.orders + excluded.orders, revenue_minor = t.revenue_minor + excluded.revenue_minor`,
			outcomes, reasons, shards, orders, revenue); err != nil {
			return fmt.Errorf("count %d outcomes in %s: %w", len(keys), schema, err)
		}
	}
	if len(s.skus) > 0 {
		keys := sortedShardKeys(s.skus, strings.Compare)
		var skus []string
		var shards []int32
		var units, revenue []int64
		for _, k := range keys {
			l := s.skus[k]
			skus, shards, units, revenue = append(skus, k.key), append(shards, k.shard), append(units, l.Units), append(revenue, l.RevenueMin)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+table(schema, "sku_sales")+` AS t (sku, shard, units, revenue_minor)
			SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[]) ON CONFLICT (sku, shard)
			DO UPDATE SET units = t.units + excluded.units, revenue_minor = t.revenue_minor + excluded.revenue_minor`,
			skus, shards, units, revenue); err != nil {
			return fmt.Errorf("count sales of %d SKUs in %s: %w", len(keys), schema, err)
		}
	}
	if len(s.customers) > 0 {
		keys := sortedShardKeys(s.customers, strings.Compare)
		var ids []string
		var shards []int32
		var confirmed, cancelled, spent []int64
		for _, k := range keys {
			c := s.customers[k]
			ids, shards = append(ids, k.key), append(shards, k.shard)
			confirmed, cancelled, spent = append(confirmed, c.Confirmed), append(cancelled, c.Cancelled), append(spent, c.SpentMinor)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+table(schema, "customers")+` AS t (customer_id, shard, orders_confirmed, orders_cancelled, spent_minor)
			SELECT * FROM unnest($1::uuid[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[]) ON CONFLICT (customer_id, shard)
			DO UPDATE SET orders_confirmed = t.orders_confirmed + excluded.orders_confirmed,
				orders_cancelled = t.orders_cancelled + excluded.orders_cancelled, spent_minor = t.spent_minor + excluded.spent_minor`,
			ids, shards, confirmed, cancelled, spent); err != nil {
			return fmt.Errorf("summarise %d customers in %s: %w", len(keys), schema, err)
		}
	}
	return nil
}

// sortedShardKeys returns m's keys by key, then shard.
func sortedShardKeys[K comparable, V any](m map[shardKey[K]]V, compare func(a, b K) int) []shardKey[K] {
	keys := make([]shardKey[K], 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b shardKey[K]) int { return cmp.Or(compare(a.key, b.key), cmp.Compare(a.shard, b.shard)) })
	return keys
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
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
