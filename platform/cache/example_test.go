package cache_test

import (
	"context"

	"github.com/switchyard/switchyard/platform/cache"
)

// readProduct stands for a read of a row and its version from the database.
func readProduct(context.Context, string) (cache.Entry, error) {
	return cache.Entry{Version: 7, Value: []byte("BOOK-1: 10 available")}, nil
}

// updateProduct is the package doc's example, compiled (it needs a Redis
// to run; cache_test.go runs the same calls against one).
func updateProduct(ctx context.Context, sku string, changed []byte) error {
	c, err := cache.New(cache.Config{URL: "redis://127.0.0.1:6379/1", Prefix: "shop:product:"})
	if err != nil {
		return err
	}
	defer c.Close()
	// A read: from Redis, or on a miss from the database (and then filled).
	e, err := c.Get(ctx, sku, func(ctx context.Context) (cache.Entry, error) {
		return readProduct(ctx, sku) // the row and its version
	})
	if err != nil {
		return err
	}
	// After a commit, or from an event: written only if newer than Redis's.
	_, err = c.Set(ctx, sku, cache.Entry{Version: e.Version + 1, Value: changed})
	return err
}

var _ = updateProduct
