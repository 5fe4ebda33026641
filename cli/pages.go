package cli

import (
	"context"
	"fmt"
)

// maxPageSize is the largest page the API serves.
const maxPageSize = 1000

// pageFunc fetches one page of at most size items after token and returns
// them with the next token ("" on the last page).
type pageFunc[T any] func(ctx context.Context, size int32, token string) ([]T, string, error)

// collectPages follows page tokens until the last page, or until limit
// items when limit > 0. Each page is one call bounded by --timeout.
func collectPages[T any](ctx context.Context, a *app, limit int, fetch pageFunc[T]) ([]T, error) {
	var (
		out   []T
		token string
		seen  = map[string]bool{}
	)
	for {
		size := maxPageSize
		if limit > 0 {
			size = min(limit-len(out), maxPageSize)
		}
		cctx, cancel := a.callCtx(ctx)
		items, next, err := fetch(cctx, int32(size), token)
		cancel()
		if err != nil {
			return nil, a.rpcErr(err)
		}
		out = append(out, items...)
		if limit > 0 && len(out) >= limit {
			return out[:limit], nil
		}
		if next == "" {
			return out, nil
		}
		if seen[next] {
			return nil, fmt.Errorf("controller returned page token %q twice", next)
		}
		seen[next] = true
		token = next
	}
}
