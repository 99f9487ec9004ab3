package inventory

import (
	"context"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	moneyv1 "github.com/switchyard/switchyard/gen/go/switchyard/money/v1"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/services/rules"
)

// emit emits a saga reply keyed by the order id, written with the
// consumer batch's other events before its commit (see consumer.Emit): a
// batch of several steps writes its events in one round trip, not one per
// step, while it holds their products' locks.
func (s *server) emit(ctx context.Context, md consumer.Metadata, orderID string, msg proto.Message) error {
	return consumer.Emit(ctx, md, s.env.Outbox, outbox.Event{AggregateID: orderID, Message: msg})
}

// reserve reserves every line of an order or none. Rows are locked in SKU
// order so that concurrent reservations cannot deadlock, and the CHECK
// constraints make overselling impossible even if this logic were wrong.
// Every order may want the same product (a sale), so the step takes two
// round trips of its own from that row's lock on: one locks and reads, one
// writes; its events go with the batch's before the commit.
func (s *server) reserve(ctx context.Context, tx pgx.Tx, cmd *inventoryv1.ReserveStock, md consumer.Metadata) error {
	want := map[string]int64{}
	for _, l := range cmd.GetLines() {
		if l.GetQuantity() <= 0 {
			return consumer.Permanent(fmt.Errorf("order %s: line %s has quantity %d", cmd.GetOrderId(), l.GetSku(), l.GetQuantity()))
		}
		want[l.GetSku()] += l.GetQuantity()
	}
	skus := make([]string, 0, len(want))
	for sku := range want {
		skus = append(skus, sku)
	}
	sort.Strings(skus)
	type product struct {
		available, price int64
		currency         string
	}
	found := map[string]product{}
	// The products locked and read, and whether a repeated command
	// reserved the order already: one round trip. The check comes after
	// the lock, so that it sees a copy of this command that held the lock
	// before (each statement reads what had committed when it began).
	var done bool
	b := &pgx.Batch{}
	b.Queue(`SELECT sku, available, price_minor, currency FROM products WHERE sku = ANY($1) ORDER BY sku FOR UPDATE`, skus).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var sku string
			var p product
			if err := rows.Scan(&sku, &p.available, &p.price, &p.currency); err != nil {
				return err
			}
			found[sku] = p
		}
		return rows.Err()
	})
	b.Queue(`SELECT EXISTS (SELECT 1 FROM reservations WHERE order_id = $1)`, cmd.GetOrderId()).QueryRow(func(row pgx.Row) error {
		return row.Scan(&done)
	})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	if done {
		return nil // a repeated command: the first reply stands
	}
	for _, sku := range skus {
		if _, ok := found[sku]; !ok {
			return s.emit(ctx, md, cmd.GetOrderId(), &inventoryv1.StockRejected{OrderId: cmd.GetOrderId(), Reason: ReasonUnknownSKU, Sku: sku})
		}
	}
	for _, sku := range skus {
		if found[sku].available < want[sku] {
			return s.emit(ctx, md, cmd.GetOrderId(), &inventoryv1.StockRejected{OrderId: cmd.GetOrderId(), Reason: ReasonOutOfStock, Sku: sku})
		}
	}
	reply := &inventoryv1.StockReserved{OrderId: cmd.GetOrderId(), Total: rules.Money(0)}
	quantities := make([]int64, len(skus))
	prices := make([]int64, len(skus))
	for i, sku := range skus {
		p, q := found[sku], want[sku]
		quantities[i], prices[i] = q, p.price
		reply.Lines = append(reply.Lines, &inventoryv1.StockLine{Sku: sku, Quantity: q, UnitPrice: &moneyv1.Money{Currency: p.currency, AmountMinor: p.price}})
		total, ok := addLine(reply.Total.AmountMinor, p.price, q)
		if !ok {
			// Only a product priced before prices were bounded can get here:
			// nothing is reserved (the transaction rolls back) and the saga
			// cancels the order at its deadline.
			return consumer.Permanent(fmt.Errorf("order %s: total overflows at %d x %s at %d", cmd.GetOrderId(), q, sku, p.price))
		}
		reply.Total.AmountMinor = total
	}
	// Every line's reservation and stock change in one statement.
	if err := s.changeStock(ctx, tx, md, nil, `WITH l AS (
			SELECT * FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS l(line_sku, line_quantity, line_price)),
		r AS (INSERT INTO reservations (order_id, sku, quantity, unit_price_minor, state)
			SELECT $1, line_sku, line_quantity, line_price, 'RESERVED' FROM l)
		UPDATE products p SET available = p.available - l.line_quantity, reserved = p.reserved + l.line_quantity, version = p.version + 1
		FROM l WHERE p.sku = l.line_sku RETURNING `+productColumns,
		cmd.GetOrderId(), skus, quantities, prices); err != nil {
		return err
	}
	return s.emit(ctx, md, cmd.GetOrderId(), reply)
}

// lockOrderProducts queues the lock of the products of an order's
// reservations, in SKU order, the order reserve locks them in, so that
// commits, releases and reservations running at once cannot deadlock.
func lockOrderProducts(orderID string) *pgx.Batch {
	b := &pgx.Batch{}
	b.Queue(`SELECT 1 FROM products WHERE sku IN (SELECT sku FROM reservations WHERE order_id = $1)
		ORDER BY sku FOR UPDATE`, orderID)
	return b
}

// commit turns an order's reservation into sold units.
func (s *server) commit(ctx context.Context, tx pgx.Tx, cmd *inventoryv1.CommitStock, md consumer.Metadata) error {
	if err := s.changeStock(ctx, tx, md, lockOrderProducts(cmd.GetOrderId()), `WITH c AS (
			UPDATE reservations SET state = 'COMMITTED', update_time = now()
			WHERE order_id = $1 AND state = 'RESERVED' RETURNING sku AS line_sku, quantity AS line_quantity)
		UPDATE products p SET reserved = p.reserved - c.line_quantity, sold = p.sold + c.line_quantity, version = p.version + 1
		FROM c WHERE p.sku = c.line_sku RETURNING `+productColumns,
		cmd.GetOrderId()); err != nil {
		return fmt.Errorf("commit the reservation of order %s: %w", cmd.GetOrderId(), err)
	}
	return s.emit(ctx, md, cmd.GetOrderId(), &inventoryv1.StockCommitted{OrderId: cmd.GetOrderId()})
}

// release returns a reservation to available stock, or restocks the units
// of a committed one. Releasing twice, or an order never reserved, changes
// nothing.
func (s *server) release(ctx context.Context, tx pgx.Tx, cmd *inventoryv1.ReleaseStock, md consumer.Metadata) error {
	if err := s.changeStock(ctx, tx, md, lockOrderProducts(cmd.GetOrderId()), `WITH r AS (
			UPDATE reservations n SET state = 'RELEASED', update_time = now()
			FROM reservations o
			WHERE n.order_id = $1 AND o.order_id = n.order_id AND o.sku = n.sku AND o.state IN ('RESERVED', 'COMMITTED')
			RETURNING n.sku AS line_sku, n.quantity AS line_quantity, o.state AS was)
		UPDATE products p SET
			available = p.available + r.line_quantity,
			reserved  = p.reserved - CASE WHEN r.was = 'RESERVED' THEN r.line_quantity ELSE 0 END,
			sold      = p.sold - CASE WHEN r.was = 'COMMITTED' THEN r.line_quantity ELSE 0 END,
			version   = p.version + 1
		FROM r WHERE p.sku = r.line_sku RETURNING `+productColumns, cmd.GetOrderId()); err != nil {
		return fmt.Errorf("release the reservation of order %s: %w", cmd.GetOrderId(), err)
	}
	return s.emit(ctx, md, cmd.GetOrderId(), &inventoryv1.StockReleased{OrderId: cmd.GetOrderId()})
}

// changeStock runs sql, an UPDATE of products that returns productColumns
// of every row it changed, after the statements in b (nil for none) and in
// the same round trip, and emits their StockChanged events.
func (s *server) changeStock(ctx context.Context, tx pgx.Tx, md consumer.Metadata, b *pgx.Batch, sql string, args ...any) error {
	if b == nil {
		b = &pgx.Batch{}
	}
	var changed []change
	b.Queue(sql, args...).Query(func(rows pgx.Rows) error {
		var err error
		changed, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (change, error) {
			p, version, err := scanProduct(r)
			return change{p, version}, err
		})
		return err
	})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	for _, ch := range changed {
		if err := s.emitStockChanged(ctx, md, ch); err != nil {
			return err
		}
	}
	return nil
}

// cacheWrites is the key under which a transaction gathers its changes for
// the stock cache.
type cacheWrites struct{}

// emitStockChanged is stockChanged for a saga step. The changes of the
// step's transaction (of every event in its batch) go to the stock cache
// together once it has committed, so reads see them at once rather than
// when the cache's updater gets to their events.
func (s *server) emitStockChanged(ctx context.Context, md consumer.Metadata, ch change) error {
	if err := consumer.Emit(ctx, md, s.env.Outbox, stockChangedEvent(ch.product, ch.version)); err != nil {
		return err
	}
	if s.stock == nil {
		return nil
	}
	pending, err := consumer.Gather(md, cacheWrites{}, func() *[]change {
		v := &[]change{}
		md.AfterCommit(func(ctx context.Context) { s.stock.put(ctx, time.Now(), *v...) })
		return v
	}, nil)
	if err != nil {
		return err
	}
	*pending = append(*pending, ch)
	return nil
}

// addLine returns total + price*quantity, and false if that is negative or
// does not fit in an int64.
func addLine(total, price, quantity int64) (int64, bool) {
	if price < 0 || quantity < 0 || total < 0 {
		return 0, false
	}
	if quantity != 0 && price > math.MaxInt64/quantity {
		return 0, false
	}
	line := price * quantity
	if total > math.MaxInt64-line {
		return 0, false
	}
	return total + line, true
}
