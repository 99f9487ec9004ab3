// Package inventory keeps products and their stock, and takes part in the
// order saga: it reserves every line of an order or none, commits a
// reservation when the order is confirmed, and releases it (or restocks sold
// units) when the order is cancelled.
package inventory

import (
	"context"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	inventoryv1 "github.com/switchyard/switchyard/gen/go/switchyard/inventory/v1"
	moneyv1 "github.com/switchyard/switchyard/gen/go/switchyard/money/v1"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/idempotency"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/validate"
	"github.com/switchyard/switchyard/services/rules"
)

//go:embed migrations/*.sql
var migrations embed.FS

// CacheGroup is the consumer group that applies StockChanged to the stock
// cache.
const CacheGroup = "inventory-cache"

// Failure reasons in StockRejected.
const (
	ReasonOutOfStock = "OUT_OF_STOCK"
	ReasonUnknownSKU = "UNKNOWN_SKU"
)

// maxStock bounds stock and adjustments so that counters never overflow.
const maxStock = 1_000_000_000

// maxPrice bounds a unit price (10^12 minor units, ten billion dollars):
// with at most 100 lines of at most 1,000 units, an order's total stays far
// below what int64 minor units hold. Prices are positive: a free product
// would make an order that confirms with nothing to charge, which the
// saga's "confirmed means exactly one capture" cannot express.
const maxPrice = 1_000_000_000_000

// Spec describes the inventory service: it consumes the order saga's
// commands.
func Spec() service.Spec {
	return service.Spec{Name: "inventory", Port: 50053, Migrations: migrations, Emits: true, Setup: Setup}
}

// Setup registers the InventoryService and the saga command handlers and,
// with SWITCHYARD_CACHE_URL set, the stock cache and its updater.
func Setup(env *service.Env) error {
	s := &server{env: env}
	inventoryv1.RegisterInventoryServiceServer(env.Server, s)
	consumer.Handle(env.Consumer, s.reserve)
	consumer.Handle(env.Consumer, s.commit)
	consumer.Handle(env.Consumer, s.release)
	if env.Config.CacheURL != "" {
		var err error
		if s.stock, err = newStockCache(env); err != nil {
			return err
		}
	}
	return nil
}

type server struct {
	inventoryv1.UnimplementedInventoryServiceServer
	env   *service.Env
	stock *stockCache // nil without SWITCHYARD_CACHE_URL
}

const productColumns = `sku, name, price_minor, currency, available, reserved, version`

// scanProduct scans productColumns into a product and its version.
func scanProduct(row pgx.Row) (*inventoryv1.Product, int64, error) {
	p := &inventoryv1.Product{Price: &moneyv1.Money{}}
	var version int64
	err := row.Scan(&p.Sku, &p.Name, &p.Price.AmountMinor, &p.Price.Currency, &p.Available, &p.Reserved, &version)
	return p, version, err
}

// change is a product as a transaction left it: what its StockChanged
// event says, and what the stock cache is given once the transaction has
// committed.
type change struct {
	product *inventoryv1.Product
	version int64
}

// stockChanged writes the StockChanged event of a product's new counters
// and returns the change for the cache.
func (s *server) stockChanged(ctx context.Context, tx pgx.Tx, p *inventoryv1.Product, version int64) (change, error) {
	ch := change{product: p, version: version}
	return ch, s.env.Outbox.Write(ctx, tx, stockChangedEvent(p, version))
}

// stockChangedEvent is the StockChanged event of a product at a version.
func stockChangedEvent(p *inventoryv1.Product, version int64) outbox.Event {
	return outbox.Event{AggregateID: p.GetSku(),
		Message: &inventoryv1.StockChanged{Sku: p.GetSku(), Available: p.GetAvailable(), Reserved: p.GetReserved(), Version: version}}
}

func (s *server) CreateProduct(ctx context.Context, req *inventoryv1.CreateProductRequest) (*inventoryv1.CreateProductResponse, error) {
	var v validate.Violations
	rules.SKU(&v, "sku", req.GetSku())
	v.Length("name", req.GetName(), 1, 200)
	rules.Amount(&v, "price", req.GetPrice())
	if req.GetPrice().GetAmountMinor() > maxPrice {
		v.Addf("price.amount_minor", "must be at most %d", int64(maxPrice))
	}
	v.Range("stock", req.GetStock(), 0, maxStock)
	if err := v.Err(); err != nil {
		return nil, err
	}
	var ch change
	err := pgx.BeginFunc(ctx, s.env.Pool, func(tx pgx.Tx) error {
		p, version, err := scanProduct(tx.QueryRow(ctx, `INSERT INTO products (sku, name, price_minor, currency, initial, available)
			VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT DO NOTHING RETURNING `+productColumns,
			req.GetSku(), req.GetName(), req.GetPrice().GetAmountMinor(), req.GetPrice().GetCurrency(), req.GetStock()))
		if err != nil {
			return err
		}
		ch, err = s.stockChanged(ctx, tx, p, version)
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.AlreadyExists, "product %s already exists", req.GetSku())
	}
	if err != nil {
		return nil, fmt.Errorf("create product %s: %w", req.GetSku(), err)
	}
	s.stock.put(ctx, time.Now(), ch)
	return &inventoryv1.CreateProductResponse{Product: ch.product}, nil
}

func (s *server) GetProduct(ctx context.Context, req *inventoryv1.GetProductRequest) (*inventoryv1.GetProductResponse, error) {
	var v validate.Violations
	rules.SKU(&v, "sku", req.GetSku())
	if err := v.Err(); err != nil {
		return nil, err
	}
	var p *inventoryv1.Product
	var err error
	if s.stock != nil {
		p, err = s.stock.get(ctx, req.GetSku(), s.loadProduct)
	} else {
		p, _, err = s.loadProduct(ctx, req.GetSku())
	}
	if err != nil {
		return nil, err
	}
	return &inventoryv1.GetProductResponse{Product: p}, nil
}

// loadProduct reads a product and its version from the database.
func (s *server) loadProduct(ctx context.Context, sku string) (*inventoryv1.Product, int64, error) {
	p, version, err := scanProduct(s.env.Pool.QueryRow(ctx, `SELECT `+productColumns+` FROM products WHERE sku = $1`, sku))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, 0, status.Errorf(codes.NotFound, "product %s not found", sku)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get product %s: %w", sku, err)
	}
	return p, version, nil
}

func (s *server) ListProducts(ctx context.Context, req *inventoryv1.ListProductsRequest) (*inventoryv1.ListProductsResponse, error) {
	var v validate.Violations
	v.Range("page_size", int64(req.GetPageSize()), 0, 1000)
	after := ""
	if t := req.GetPageToken(); t != "" {
		b, err := base64.RawURLEncoding.DecodeString(t)
		after = string(b)
		if err != nil || !rules.IsSKU(after) {
			v.Add("page_token", "is not a token returned by ListProducts")
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = 50
	}
	rows, err := s.env.Pool.Query(ctx, `SELECT `+productColumns+` FROM products WHERE sku > $1 ORDER BY sku LIMIT $2`, after, size+1)
	if err != nil {
		return nil, fmt.Errorf("list products: %w", err)
	}
	products, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*inventoryv1.Product, error) {
		p, _, err := scanProduct(r)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("list products: %w", err)
	}
	resp := &inventoryv1.ListProductsResponse{Products: products}
	if len(products) > size {
		resp.Products = products[:size]
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(products[size-1].Sku))
	}
	return resp, nil
}

func (s *server) AdjustStock(ctx context.Context, req *inventoryv1.AdjustStockRequest) (*inventoryv1.AdjustStockResponse, error) {
	var v validate.Violations
	rules.SKU(&v, "sku", req.GetSku())
	v.Range("delta", req.GetDelta(), -maxStock, maxStock)
	if req.GetDelta() == 0 {
		v.Add("delta", "must not be zero")
	}
	v.Length("idempotency_key", req.GetIdempotencyKey(), 0, 200)
	if err := v.Err(); err != nil {
		return nil, err
	}
	var resp *inventoryv1.AdjustStockResponse
	var ch change // set when this call changed the stock
	err := pgx.BeginFunc(ctx, s.env.Pool, func(tx pgx.Tx) error {
		var err error
		ch = change{}
		resp, _, err = idempotency.Do(ctx, tx, "AdjustStock/"+req.GetSku(), req.GetIdempotencyKey(), req, func() (*inventoryv1.AdjustStockResponse, error) {
			p, _, err := scanProduct(tx.QueryRow(ctx, `SELECT `+productColumns+` FROM products WHERE sku = $1 FOR UPDATE`, req.GetSku()))
			if errors.Is(err, pgx.ErrNoRows) {
				return nil, status.Errorf(codes.NotFound, "product %s not found", req.GetSku())
			}
			if err != nil {
				return nil, err
			}
			if p.Available+req.GetDelta() < 0 {
				return nil, status.Errorf(codes.FailedPrecondition, "adjusting %s by %d would make available stock negative (available %d)",
					req.GetSku(), req.GetDelta(), p.Available)
			}
			if p.Available+req.GetDelta() > maxStock {
				return nil, status.Errorf(codes.FailedPrecondition, "adjusting %s by %d exceeds the maximum stock %d", req.GetSku(), req.GetDelta(), maxStock)
			}
			var v int64
			p, v, err = scanProduct(tx.QueryRow(ctx, `UPDATE products SET available = available + $2, adjustments = adjustments + $2,
				version = version + 1 WHERE sku = $1 RETURNING `+productColumns, req.GetSku(), req.GetDelta()))
			if err != nil {
				return nil, err
			}
			if ch, err = s.stockChanged(ctx, tx, p, v); err != nil {
				return nil, err
			}
			return &inventoryv1.AdjustStockResponse{Product: p}, nil
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	if ch.product != nil {
		s.stock.put(ctx, time.Now(), ch) // the caller reads its own write
	}
	return resp, nil
}
