package store

import "context"

// List and Watch expose the cache's two halves to the external tests.
func (c *Cache) List(ctx context.Context) (int64, error)     { return c.list(ctx) }
func (c *Cache) Watch(ctx context.Context, from int64) error { return c.watch(ctx, from) }

// SetPruneBatch sets how many events a prune deletes per transaction, until
// the returned func restores it.
func SetPruneBatch(n uint64) (restore func()) {
	old := pruneBatch
	pruneBatch = n
	return func() { pruneBatch = old }
}
