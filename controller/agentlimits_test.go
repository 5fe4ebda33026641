package controller_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/etcdtest"
	"github.com/mpfleet/mpfleet/internal/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestAlreadyExistsCostsNoReconnect: a host refused by replica B because
// replica A holds its session (ALREADY_EXISTS) tries again and again, more
// often than its reconnect burst (10); none of the refusals counts, so once
// A lets the host go, B accepts it at once rather than refusing it for
// reconnecting too often.
func TestAlreadyExistsCostsNoReconnect(t *testing.T) {
	e, cli := etcdtest.Embedded(t)
	args := []string{"--etcd-endpoints", strings.Join(e.Endpoints(), ",")}
	ra, rb := runController(t, args...), runController(t, args...)

	actx, stopA := context.WithCancel(context.Background())
	defer stopA()
	if _, err := hello(actx, ra.conn, "web-1"); err != nil {
		t.Fatalf("web-1 to replica A: %v", err)
	}
	for i := range 15 {
		ctx, cancel := context.WithCancel(context.Background())
		_, err := hello(ctx, rb.conn, "web-1")
		cancel()
		if status.Code(err) != codes.AlreadyExists {
			t.Fatalf("attempt %d at replica B while A holds web-1: %v, want ALREADY_EXISTS", i+1, err)
		}
	}
	stopA()
	waitKey(t, cli, store.DefaultPrefix+"sessions/web-1", 10*time.Second, func(v string) bool { return v == "" })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := hello(ctx, rb.conn, "web-1"); err != nil {
		t.Fatalf("web-1 to replica B once A let it go, after 15 ALREADY_EXISTS refusals: %v, want accepted", err)
	}
}
