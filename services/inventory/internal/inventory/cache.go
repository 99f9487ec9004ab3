package inventory

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	moneyv1 "github.com/switchyard/switchyard/gen/go/switchyard/money/v1"
	"github.com/switchyard/switchyard/platform/cache"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/service"
)

// CacheKeyPrefix is put before a SKU to make its stock cache key: the
// entry is a Product in protobuf encoding and the version it was read at.
const CacheKeyPrefix = "switchyard:inventory:product:"

// stockCache serves GetProduct from Redis. It is an aid to reads only:
// nothing that decides (reservations) reads it. It is fed from three
// sides, each writing a version only if it is newer than the cached one:
// the inventory-cache consumer group applying StockChanged, the RPCs that
// change stock (after their commit, so a caller reads its own write), and
// the fill after a miss.
type stockCache struct {
	c *cache.Cache
}

// newStockCache opens the cache, registers its metrics and its updater (a
// consumer group of its own: see the README's "The stock cache").
func newStockCache(env *service.Env) (*stockCache, error) {
	c, err := cache.New(cache.Config{URL: env.Config.CacheURL, Prefix: CacheKeyPrefix, Logger: env.Logger, Local: true})
	if err != nil {
		return nil, err
	}
	env.Metrics.Registry.MustRegister(c.Collectors()...)
	sc := &stockCache{c: c}
	updater, err := env.AddConsumer(CacheGroup)
	if err != nil {
		return nil, err
	}
	consumer.Handle(updater, sc.apply)
	env.Go(func(ctx context.Context) error {
		<-ctx.Done()
		return c.Close()
	})
	return sc, nil
}

// get returns the product from the cache, or loads it (once per SKU in
// this process at a time) and fills the cache. A sick Redis never fails it.
func (sc *stockCache) get(ctx context.Context, sku string, load func(context.Context, string) (*inventoryv1.Product, int64, error)) (*inventoryv1.Product, error) {
	e, err := sc.c.Get(ctx, sku, func(ctx context.Context) (cache.Entry, error) {
		p, version, err := load(ctx, sku)
		if err != nil {
			return cache.Entry{}, err
		}
		b, err := proto.Marshal(p)
		if err != nil {
			return cache.Entry{}, fmt.Errorf("encode product %s: %w", sku, err)
		}
		return cache.Entry{Version: version, Value: b}, nil
	})
	if err != nil {
		return nil, err
	}
	p := &inventoryv1.Product{}
	if err := proto.Unmarshal(e.Value, p); err != nil || p.GetSku() != sku {
		// Not what this service writes: read the database rather than
		// serve it.
		p, _, err = load(ctx, sku)
		return p, err
	}
	return p, nil
}

// put writes changes the caller committed at committed, in one round trip,
// each unless the cache holds the same or a newer version. A failure (or
// a write not tried while Redis is skipped) is the cache's to handle: this
// process reads those SKUs from the database until a later write goes
// through, and the updater brings the changes anyway.
func (sc *stockCache) put(ctx context.Context, committed time.Time, changes ...change) {
	if sc == nil {
		return
	}
	updates := make([]cache.Update, 0, len(changes))
	for _, ch := range changes {
		b, err := proto.Marshal(ch.product)
		if err != nil {
			continue // the updater writes it, or says why it cannot
		}
		updates = append(updates, cache.Update{Key: ch.product.GetSku(), Entry: cache.Entry{Version: ch.version, Value: b}})
	}
	_, _ = sc.c.ApplyAll(ctx, updates, committed)
}

// apply brings a StockChanged to the cache: it writes the product as the
// database holds it now, at that version or a newer one, unless the cache
// holds the same or newer. Not the event's own counters: a late or
// replayed event, meeting a key that expired or a Redis that came back
// empty, would put an old version back for as long as nothing changes. A
// failure of Redis is transient: the partition waits for Redis rather than
// drop the change.
func (sc *stockCache) apply(ctx context.Context, tx pgx.Tx, ev *inventoryv1.StockChanged, md consumer.Metadata) error {
	p := &inventoryv1.Product{Sku: ev.GetSku(), Price: &moneyv1.Money{}}
	var version int64
	err := tx.QueryRow(ctx, `SELECT name, price_minor, currency, available, reserved, version FROM products WHERE sku = $1`, ev.GetSku()).
		Scan(&p.Name, &p.Price.AmountMinor, &p.Price.Currency, &p.Available, &p.Reserved, &version)
	if errors.Is(err, pgx.ErrNoRows) {
		return consumer.Permanent(fmt.Errorf("stock of unknown product %s", ev.GetSku()))
	}
	if err != nil {
		return fmt.Errorf("read product %s: %w", ev.GetSku(), err)
	}
	b, err := proto.Marshal(p)
	if err != nil {
		return consumer.Permanent(fmt.Errorf("encode product %s: %w", ev.GetSku(), err))
	}
	// The age is known only for the event's own version: a newer one was
	// committed later, at a time this event does not carry.
	changed := md.Time
	if version != ev.GetVersion() {
		changed = time.Time{}
	}
	if _, err := sc.c.Apply(ctx, ev.GetSku(), cache.Entry{Version: version, Value: b}, changed); err != nil {
		return consumer.Transient(fmt.Errorf("cache stock of %s at version %d: %w", ev.GetSku(), version, err))
	}
	return nil
}
