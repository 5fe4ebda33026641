package cli

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// maxPageSize is the largest page the API serves.
const maxPageSize = 1000

// pageResponse is a list response: a page of items and the token of the
// next page ("" on the last page).
type pageResponse interface {
	proto.Message
	GetNextPageToken() string
}

// listPages calls a list method (e.g. hc.ListHosts) page after page until
// the last page, or until limit items when limit > 0, and returns the items
// that items takes from each response. It sets req's page_size and
// page_token, the fields every list request of the API has (AIP-158). Each
// page is one call bounded by --timeout. A failure is returned as "what:
// why".
func listPages[Q proto.Message, R pageResponse, T any](ctx context.Context, a *app, what string, limit int, list unaryMethod[Q, R], req Q, items func(R) []T) ([]T, error) {
	m := req.ProtoReflect()
	sizeField := m.Descriptor().Fields().ByName("page_size")
	tokenField := m.Descriptor().Fields().ByName("page_token")
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
		m.Set(sizeField, protoreflect.ValueOfInt32(int32(size)))
		m.Set(tokenField, protoreflect.ValueOfString(token))
		cctx, cancel := a.callCtx(ctx)
		resp, err := list(cctx, req)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, a.rpcErr(err))
		}
		out = append(out, items(resp)...)
		if limit > 0 && len(out) >= limit {
			return out[:limit], nil
		}
		next := resp.GetNextPageToken()
		if next == "" {
			return out, nil
		}
		if seen[next] {
			return nil, fmt.Errorf("%s: controller returned page token %q twice", what, next)
		}
		seen[next] = true
		token = next
	}
}
