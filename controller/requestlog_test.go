package controller_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/mpfleet/mpfleet/controller"
	"github.com/mpfleet/mpfleet/internal/etcdtest"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// syncBuffer is a log destination the controller's goroutines write to
// while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a JSON record: %q: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

// TestRequestLogMatchesAudit: at debug, each call's "request" record has
// the request id its audit event stores (made up by the controller when
// the caller sent none), and the one the caller sees in x-request-id.
func TestRequestLogMatchesAudit(t *testing.T) {
	var out syncBuffer
	_, cli := etcdtest.Embedded(t)
	e := startOn(t, cli, controller.Options{Log: slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	conn := e.conn

	var header metadata.MD
	if _, err := pb.NewGroupServiceClient(conn).CreateGroup(ctxT(t), &pb.CreateGroupRequest{GroupId: "web", Group: webGroup()}, grpc.Header(&header)); err != nil {
		t.Fatal(err)
	}
	evs, err := pb.NewAuditServiceClient(conn).ListAuditEvents(ctxT(t), &pb.ListAuditEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs.Events) != 1 || evs.Events[0].Action != "groups.create" || evs.Events[0].RequestId == "" {
		t.Fatalf("audit events %v, want one groups.create with a request id", evs.Events)
	}
	id := evs.Events[0].RequestId
	if got := header.Get("x-request-id"); len(got) != 1 || got[0] != id {
		t.Errorf("x-request-id %q, want the audit event's %q", got, id)
	}

	var found []map[string]any
	for _, rec := range out.records(t) {
		if rec["msg"] == "request" && rec["method"] == "/mpfleet.v1.GroupService/CreateGroup" {
			found = append(found, rec)
		}
	}
	if len(found) != 1 {
		t.Fatalf("request records of CreateGroup: %v, want one", found)
	}
	rec := found[0]
	if rec["request_id"] != id || rec["level"] != "DEBUG" || rec["code"] != "OK" || rec["actor"] != "anonymous" || rec["peer"] == "" {
		t.Errorf("request record %v, want request_id %q, level DEBUG, code OK, actor anonymous and a peer", rec, id)
	}
}
