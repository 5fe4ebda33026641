package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/internal/store"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestByteSizeFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		str  string
		err  bool
	}{
		{in: "0", want: 0, str: "0"},
		{in: "1000", want: 1000, str: "1000"},
		{in: "2GiB", want: 2 << 30, str: "2GiB"},
		{in: "2 gib", want: 2 << 30, str: "2GiB"},
		{in: "512MiB", want: 512 << 20, str: "512MiB"},
		{in: "1536MiB", want: 1536 << 20, str: "1536MiB"},
		{in: "64KiB", want: 64 << 10, str: "64KiB"},
		{in: "1GB", want: 1e9, str: "1000000000"},
		{in: "16mb", want: 16e6, str: "15625KiB"},
		{in: "10B", want: 10, str: "10"},
		{in: "", err: true},
		{in: "GiB", err: true},
		{in: "-1", err: true},
		{in: "1.5GiB", err: true},
		{in: "2PiB", err: true},
		{in: "99999999999TiB", err: true},
	} {
		var b byteSize
		err := b.Set(tc.in)
		if tc.err {
			if err == nil {
				t.Errorf("Set(%q) = %d, want an error", tc.in, b)
			}
			continue
		}
		if err != nil || uint64(b) != tc.want || b.String() != tc.str {
			t.Errorf("Set(%q) = %d (%s), %v; want %d (%s)", tc.in, b, b.String(), err, tc.want, tc.str)
		}
	}
}

// etcd's errors become statuses that say what is wrong with the store;
// statuses and other errors are left to toStatus' other rules.
func TestStoreErrorStatus(t *testing.T) {
	for _, tc := range []struct {
		err    error
		code   codes.Code
		prefix string
	}{
		{fmt.Errorf("create group %q: %w", "web", rpctypes.ErrNoSpace), codes.ResourceExhausted, `etcd is out of space (NOSPACE alarm): create group "web": etcdserver: mvcc: database space exceeded`},
		{fmt.Errorf("create group %q: %w", "web", store.Classify(rpctypes.ErrGRPCNoSpace)), codes.ResourceExhausted, "etcd is out of space (NOSPACE alarm): "},
		{fmt.Errorf("get group: %w", rpctypes.ErrNoLeader), codes.Unavailable, "etcd is unreachable: get group: etcdserver: no leader"},
		{fmt.Errorf("get group: %w", status.Error(codes.Unavailable, "connection refused")), codes.Unavailable, "etcd is unreachable: get group: rpc error"},
		{status.Error(codes.Unavailable, "draining"), codes.Unavailable, "draining"},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "x: context deadline exceeded"},
		{fmt.Errorf("group: %w", store.ErrNotFound), codes.NotFound, "group: not found"},
		{errors.New("boom"), codes.Internal, "boom"},
	} {
		st, _ := status.FromError(toStatus(tc.err))
		if st.Code() != tc.code || !strings.HasPrefix(st.Message(), tc.prefix) {
			t.Errorf("toStatus(%v) = %s %q, want %s %q...", tc.err, st.Code(), st.Message(), tc.code, tc.prefix)
		}
	}
}
