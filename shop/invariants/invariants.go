// Package invariants checks the shop's invariants (docs/design.md) across the services'
// databases at a quiet point:
//
//   - stock: per SKU, initial + adjustments = available + reserved + sold,
//     no counter negative, and reserved/sold match the reservations;
//   - money: per customer, top-ups - captures + refunds = balance >= 0;
//   - every order is CONFIRMED or CANCELLED; CONFIRMED has exactly one net
//     capture of its total and committed stock for every line; CANCELLED has
//     no net charge and no held stock;
//   - exactly one notification per registration and per terminal order;
//   - with [Checker.UseStockCache], every entry of inventory's stock cache
//     equals the database (counters and version);
//   - analytics: its sales, outcomes and customer summaries say what the
//     orders database says, and every confirmed order has exactly one
//     score.
//
// Use [Checker.WaitQuiet] first: it waits until no order is pending and
// every consumer group has consumed every published event.
package invariants

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	"github.com/switchyard/switchyard/platform/cache"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/shop/registry"
)

// Checker reads the services' databases and the transport.
type Checker struct {
	pools map[string]*pgxpool.Pool
	tr    transport.Transport
	stock *cache.Cache // inventory's stock cache, if checked
}

// Open connects to each service's database; url maps a service name to its
// database URL, and tr reads the consumer groups' progress.
func Open(ctx context.Context, url func(service string) string, tr transport.Transport) (*Checker, error) {
	c := &Checker{pools: map[string]*pgxpool.Pool{}, tr: tr}
	for _, s := range registry.Names() {
		p, err := pgxpool.New(ctx, url(s))
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("open %s database: %w", s, err)
		}
		c.pools[s] = p
	}
	return c, nil
}

// Close closes the connections.
func (c *Checker) Close() {
	for _, p := range c.pools {
		p.Close()
	}
	if c.stock != nil {
		_ = c.stock.Close()
	}
}

// UseStockCache makes WaitQuiet wait for the stock cache's updater group
// too, and Check compare every cached entry with the database. url is
// inventory's SWITCHYARD_CACHE_URL.
func (c *Checker) UseStockCache(url string) error {
	sc, err := cache.New(cache.Config{URL: url, Prefix: stockCachePrefix, Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	c.stock = sc
	return nil
}

// stockCachePrefix is inventory's CacheKeyPrefix.
const stockCachePrefix = "switchyard:inventory:product:"

// Pool returns a service's database pool.
func (c *Checker) Pool(service string) *pgxpool.Pool { return c.pools[service] }

// WaitQuiet waits until no order is pending, no outbox row waits, and,
// twice in a row two seconds apart, every consumer group has finished every
// message of the topics it consumes.
func (c *Checker) WaitQuiet(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		state, quiet, err := c.snapshot(ctx)
		if err == nil && quiet && state == last {
			return nil
		}
		if err == nil && quiet {
			last = state
		} else {
			last = ""
		}
		if time.Now().After(deadline) && err != nil {
			return fmt.Errorf("not quiet after %s (state: %s): last error: %w", timeout, state, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not quiet after %s (state: %s)", timeout, state)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// snapshot describes pending orders, waiting outbox rows and each group's
// backlog; quiet means none.
func (c *Checker) snapshot(ctx context.Context) (string, bool, error) {
	var pending int
	if err := c.pools["orders"].QueryRow(ctx, `SELECT count(*) FROM orders WHERE status = 'PENDING'`).Scan(&pending); err != nil {
		return "", false, err
	}
	outboxRows := 0
	for _, svc := range registry.Services {
		if !svc.Emits {
			continue // no outbox
		}
		var n int
		if err := c.pools[svc.Name].QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n); err != nil {
			return "", false, err
		}
		outboxRows += n
	}
	subs := map[string][]string{}
	for _, svc := range registry.Services {
		if len(svc.Consumes) > 0 {
			subs[svc.Name] = svc.Consumes
		}
	}
	if c.stock != nil {
		subs["inventory-cache"] = []string{"switchyard.product"}
	}
	groups := make([]string, 0, len(subs))
	for g := range subs {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	var parts []string
	var total int64
	for _, g := range groups {
		n, err := transport.Backlog(ctx, c.tr, g, subs[g]...)
		if err != nil {
			return "", false, err
		}
		total += n
		parts = append(parts, fmt.Sprintf("%s=%d", g, n))
	}
	state := fmt.Sprintf("pending=%d outbox=%d backlog %s", pending, outboxRows, strings.Join(parts, " "))
	return state, pending == 0 && outboxRows == 0 && total == 0, nil
}

// Check verifies every invariant and returns all violations found.
func (c *Checker) Check(ctx context.Context) error {
	var v []string
	add := func(format string, args ...any) { v = append(v, fmt.Sprintf(format, args...)) }
	if err := c.checkStock(ctx, add); err != nil {
		return err
	}
	if err := c.checkMoney(ctx, add); err != nil {
		return err
	}
	if err := c.checkOrders(ctx, add); err != nil {
		return err
	}
	if err := c.checkNotifications(ctx, add); err != nil {
		return err
	}
	if err := c.checkAnalytics(ctx, add); err != nil {
		return err
	}
	if c.stock != nil {
		if err := c.checkStockCache(ctx, add); err != nil {
			return err
		}
	}
	if len(v) > 0 {
		return &Violations{List: v}
	}
	return nil
}

// Violations is the error Check returns when invariants do not hold: one
// line per violation.
type Violations struct{ List []string }

func (v *Violations) Error() string {
	list := v.List
	if len(list) > 30 {
		list = append(list[:30:30], fmt.Sprintf("... and %d more", len(v.List)-30))
	}
	return "invariants violated:\n  " + strings.Join(list, "\n  ")
}

func (c *Checker) checkStock(ctx context.Context, add func(string, ...any)) error {
	rows, err := c.pools["inventory"].Query(ctx, `SELECT p.sku, p.initial, p.adjustments, p.available, p.reserved, p.sold,
		coalesce(sum(r.quantity) FILTER (WHERE r.state = 'RESERVED'), 0),
		coalesce(sum(r.quantity) FILTER (WHERE r.state = 'COMMITTED'), 0)
		FROM products p LEFT JOIN reservations r ON r.sku = p.sku GROUP BY p.sku`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var sku string
		var initial, adj, avail, reserved, sold, held, committed int64
		if err := rows.Scan(&sku, &initial, &adj, &avail, &reserved, &sold, &held, &committed); err != nil {
			return err
		}
		if initial+adj != avail+reserved+sold {
			add("stock %s: initial %d + adjustments %d != available %d + reserved %d + sold %d", sku, initial, adj, avail, reserved, sold)
		}
		if avail < 0 || reserved < 0 || sold < 0 {
			add("stock %s: negative counter (available %d, reserved %d, sold %d)", sku, avail, reserved, sold)
		}
		if reserved != held || sold != committed {
			add("stock %s: reserved %d/sold %d but reservations hold %d/%d", sku, reserved, sold, held, committed)
		}
	}
	return rows.Err()
}

// checkStockCache compares every cached product with its row: at a quiet
// point the updater has applied every StockChanged, and nothing may hold
// an older version (or a newer one) than the database.
func (c *Checker) checkStockCache(ctx context.Context, add func(string, ...any)) error {
	return each(ctx, c.pools["inventory"], `SELECT sku, available, reserved, version FROM products`, func(r pgx.Rows) error {
		var sku string
		var available, reserved, version int64
		if err := r.Scan(&sku, &available, &reserved, &version); err != nil {
			return err
		}
		e, ok, err := c.stock.Peek(ctx, sku)
		if err != nil {
			return fmt.Errorf("read the stock cache: %w", err)
		}
		if !ok {
			return nil
		}
		p := &inventoryv1.Product{}
		if err := proto.Unmarshal(e.Value, p); err != nil {
			add("stock cache %s: undecodable entry: %v", sku, err)
			return nil
		}
		if e.Version != version || p.GetAvailable() != available || p.GetReserved() != reserved {
			add("stock cache %s: version %d available %d reserved %d; database: version %d available %d reserved %d",
				sku, e.Version, p.GetAvailable(), p.GetReserved(), version, available, reserved)
		}
		return nil
	})
}

func (c *Checker) checkMoney(ctx context.Context, add func(string, ...any)) error {
	rows, err := c.pools["payments"].Query(ctx, `SELECT a.customer_id::text, a.balance_minor,
		coalesce(sum(p.amount_minor) FILTER (WHERE p.kind = 'TOP_UP'), 0),
		coalesce(sum(p.amount_minor) FILTER (WHERE p.kind = 'CAPTURE'), 0),
		coalesce(sum(p.amount_minor) FILTER (WHERE p.kind = 'REFUND'), 0)
		FROM accounts a LEFT JOIN payments p ON p.customer_id = a.customer_id GROUP BY a.customer_id`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var balance, topups, captures, refunds int64
		if err := rows.Scan(&id, &balance, &topups, &captures, &refunds); err != nil {
			return err
		}
		if topups-captures+refunds != balance || balance < 0 {
			add("money %s: top-ups %d - captures %d + refunds %d != balance %d (or negative)", id, topups, captures, refunds, balance)
		}
	}
	return rows.Err()
}

type orderRow struct {
	status string
	total  int64
	items  map[string]int64
}

func (c *Checker) checkOrders(ctx context.Context, add func(string, ...any)) error {
	orders := map[string]*orderRow{}
	rows, err := c.pools["orders"].Query(ctx, `SELECT o.order_id::text, o.status, o.total_minor, i.sku, i.quantity
		FROM orders o JOIN order_items i ON i.order_id = o.order_id`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id, st, sku string
		var total, q int64
		if err := rows.Scan(&id, &st, &total, &sku, &q); err != nil {
			rows.Close()
			return err
		}
		o := orders[id]
		if o == nil {
			o = &orderRow{status: st, total: total, items: map[string]int64{}}
			orders[id] = o
		}
		o.items[sku] += q
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	type charge struct{ captures, net int64 }
	charges := map[string]charge{}
	if err := each(ctx, c.pools["payments"], `SELECT order_id::text, count(*) FILTER (WHERE kind = 'CAPTURE'),
		sum(CASE kind WHEN 'CAPTURE' THEN amount_minor ELSE -amount_minor END)
		FROM payments WHERE order_id IS NOT NULL GROUP BY order_id`, func(r pgx.Rows) error {
		var id string
		var ch charge
		err := r.Scan(&id, &ch.captures, &ch.net)
		charges[id] = ch
		return err
	}); err != nil {
		return err
	}
	type hold struct{ reserved, committed map[string]int64 }
	holds := map[string]*hold{}
	if err := each(ctx, c.pools["inventory"], `SELECT order_id::text, sku, quantity, state FROM reservations WHERE state <> 'RELEASED'`, func(r pgx.Rows) error {
		var id, sku, st string
		var q int64
		if err := r.Scan(&id, &sku, &q, &st); err != nil {
			return err
		}
		h := holds[id]
		if h == nil {
			h = &hold{reserved: map[string]int64{}, committed: map[string]int64{}}
			holds[id] = h
		}
		if st == "RESERVED" {
			h.reserved[sku] += q
		} else {
			h.committed[sku] += q
		}
		return nil
	}); err != nil {
		return err
	}
	for id, o := range orders {
		ch, h := charges[id], holds[id]
		switch o.status {
		case "PENDING":
			add("order %s: still PENDING", id)
		case "CONFIRMED":
			if ch.captures != 1 || ch.net != o.total {
				add("order %s: CONFIRMED with %d capture(s), net charge %d, total %d", id, ch.captures, ch.net, o.total)
			}
			if h == nil || len(h.reserved) > 0 || !equal(h.committed, o.items) {
				add("order %s: CONFIRMED but stock held is %+v, items %v", id, h, o.items)
			}
		case "CANCELLED":
			if ch.net != 0 {
				add("order %s: CANCELLED with net charge %d", id, ch.net)
			}
			if h != nil {
				add("order %s: CANCELLED but stock still held %+v", id, h)
			}
		}
	}
	for id, ch := range charges {
		if orders[id] == nil && ch.net != 0 {
			add("payments: net charge %d for unknown order %s", ch.net, id)
		}
	}
	for id := range holds {
		if orders[id] == nil {
			add("inventory: stock held for unknown order %s", id)
		}
	}
	return nil
}

func (c *Checker) checkNotifications(ctx context.Context, add func(string, ...any)) error {
	counts := map[string]map[string]int{} // about -> kind -> n
	if err := each(ctx, c.pools["notifications"], `SELECT about::text, kind, count(*) FROM notifications GROUP BY about, kind`, func(r pgx.Rows) error {
		var about, kind string
		var n int
		if err := r.Scan(&about, &kind, &n); err != nil {
			return err
		}
		if counts[about] == nil {
			counts[about] = map[string]int{}
		}
		counts[about][kind] = n
		return nil
	}); err != nil {
		return err
	}
	if err := each(ctx, c.pools["customers"], `SELECT customer_id::text FROM customers`, func(r pgx.Rows) error {
		var id string
		if err := r.Scan(&id); err != nil {
			return err
		}
		if n := counts[id]["WELCOME"]; n != 1 {
			add("customer %s: %d WELCOME notifications, want 1", id, n)
		}
		return nil
	}); err != nil {
		return err
	}
	return each(ctx, c.pools["orders"], `SELECT order_id::text, status FROM orders`, func(r pgx.Rows) error {
		var id, st string
		if err := r.Scan(&id, &st); err != nil {
			return err
		}
		confirmed, cancelled := counts[id]["ORDER_CONFIRMED"], counts[id]["ORDER_CANCELLED"]
		switch {
		case st == "CONFIRMED" && (confirmed != 1 || cancelled != 0):
			add("order %s: CONFIRMED with %d confirmed and %d cancelled notifications", id, confirmed, cancelled)
		case st == "CANCELLED" && (cancelled != 1 || confirmed > 1):
			add("order %s: CANCELLED with %d cancelled and %d confirmed notifications", id, cancelled, confirmed)
		}
		return nil
	})
}

// checkAnalytics compares analytics' live projections with the orders
// database, row by row, and its scores with the confirmed orders.
func (c *Checker) checkAnalytics(ctx context.Context, add func(string, ...any)) error {
	collect := func(service, sql string) (map[string]string, error) {
		out := map[string]string{}
		err := each(ctx, c.pools[service], sql, func(r pgx.Rows) error {
			var k, v string
			if err := r.Scan(&k, &v); err != nil {
				return err
			}
			out[k] = v
			return nil
		})
		return out, err
	}
	for _, q := range []struct{ what, orders, analytics string }{
		{"outcome", `SELECT status || '|' || failure_reason, count(*) || '|' || CASE WHEN status = 'CONFIRMED' THEN sum(total_minor) ELSE 0 END
			FROM orders WHERE status <> 'PENDING' GROUP BY status, failure_reason`,
			`SELECT outcome || '|' || reason, sum(orders) || '|' || sum(revenue_minor) FROM live.outcomes
			GROUP BY outcome, reason HAVING sum(orders) <> 0 OR sum(revenue_minor) <> 0`},
		{"SKU", `SELECT i.sku, sum(i.quantity) || '|' || sum(i.quantity * i.unit_price_minor) FROM order_items i JOIN orders o USING (order_id)
			WHERE o.status = 'CONFIRMED' GROUP BY i.sku`,
			`SELECT sku, sum(units) || '|' || sum(revenue_minor) FROM live.sku_sales GROUP BY sku HAVING sum(units) <> 0 OR sum(revenue_minor) <> 0`},
		{"customer", `SELECT customer_id::text, count(*) FILTER (WHERE status = 'CONFIRMED') || '|' || count(*) FILTER (WHERE status = 'CANCELLED')
			|| '|' || coalesce(sum(total_minor) FILTER (WHERE status = 'CONFIRMED'), 0) FROM orders WHERE status <> 'PENDING' GROUP BY customer_id`,
			`SELECT customer_id::text, sum(orders_confirmed) || '|' || sum(orders_cancelled) || '|' || sum(spent_minor) FROM live.customers
			GROUP BY customer_id HAVING sum(orders_confirmed) <> 0 OR sum(orders_cancelled) <> 0 OR sum(spent_minor) <> 0`},
	} {
		want, err := collect("orders", q.orders)
		if err != nil {
			return fmt.Errorf("orders by %s: %w", q.what, err)
		}
		got, err := collect("analytics", q.analytics)
		if err != nil {
			return fmt.Errorf("analytics by %s: %w", q.what, err)
		}
		for k, w := range want {
			if got[k] != w {
				add("analytics %s %s: %q, orders database says %q", q.what, k, got[k], w)
			}
		}
		for k, g := range got {
			if _, ok := want[k]; !ok {
				add("analytics %s %s: %q, orders database has none", q.what, k, g)
			}
		}
	}
	scored := map[string]bool{}
	if err := each(ctx, c.pools["analytics"], `SELECT order_id::text FROM order_scores`, func(r pgx.Rows) error {
		var id string
		if err := r.Scan(&id); err != nil {
			return err
		}
		scored[id] = true // order_id is the key: at most one score each
		return nil
	}); err != nil {
		return err
	}
	return each(ctx, c.pools["orders"], `SELECT order_id::text FROM orders WHERE status = 'CONFIRMED'`, func(r pgx.Rows) error {
		var id string
		if err := r.Scan(&id); err != nil {
			return err
		}
		if !scored[id] {
			add("order %s: CONFIRMED but not scored by analytics", id)
		}
		return nil
	})
}

func each(ctx context.Context, pool *pgxpool.Pool, sql string, fn func(pgx.Rows) error) error {
	rows, err := pool.Query(ctx, sql)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

func equal(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
