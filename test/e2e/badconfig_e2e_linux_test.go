package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"github.com/mpfleet/mpfleet/test/lab"
)

// rawCodec lets the fake controller send bytes that are not a valid
// message: []byte goes on the wire as it is; protobuf messages as usual.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case []byte:
		return m, nil
	case proto.Message:
		return proto.Marshal(m)
	}
	return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	switch m := v.(type) {
	case *[]byte:
		*m = append([]byte(nil), data...)
		return nil
	case proto.Message:
		return proto.Unmarshal(data, m)
	}
	return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
}

func (rawCodec) Name() string { return "proto" }

// fakeController serves AgentService.Connect in the ctl namespace, on the
// controller's address and with its certificate, and sends whatever the
// test tells it to: what a compromised or buggy controller could send.
type fakeController struct {
	streams chan *fakeStream        // each agent connection, after its hello
	msgs    chan *pb.ConnectRequest // every report and event of every stream
}

type fakeStream struct {
	hello *pb.AgentHello
	mu    sync.Mutex
	ss    grpc.ServerStream
}

// send sends m (a message or raw bytes) to the agent.
func (s *fakeStream) send(m any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ss.SendMsg(m)
}

func (fc *fakeController) connect(_ any, ss grpc.ServerStream) error {
	var raw []byte
	if err := ss.RecvMsg(&raw); err != nil {
		return err
	}
	req := &pb.ConnectRequest{}
	if err := proto.Unmarshal(raw, req); err != nil {
		return fmt.Errorf("first message: %w", err)
	}
	if req.GetHello() == nil {
		return errors.New("first message is not a hello")
	}
	s := &fakeStream{hello: req.GetHello(), ss: ss}
	fc.streams <- s
	for {
		var raw []byte
		if err := ss.RecvMsg(&raw); err != nil {
			return err
		}
		m := &pb.ConnectRequest{}
		if err := proto.Unmarshal(raw, m); err != nil {
			return err
		}
		if c := m.GetConfirm(); c != nil {
			// Echo, as the real controller does, so that applies stick.
			if err := s.send(&pb.ConnectResponse{Kind: &pb.ConnectResponse_Confirmed{Confirmed: c}}); err != nil {
				return err
			}
			continue
		}
		select {
		case fc.msgs <- m:
		default: // the test is not listening; drop
		}
	}
}

// startFake starts a fake controller in the ctl namespace of f's lab.
func (f *fleet) startFake(t *testing.T) *fakeController {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(f.PKI.Controller.Cert, f.PKI.Controller.Key)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := f.CAPool()
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := f.Lab.Do(lab.Controller, func() (err error) { ln, err = net.Listen("tcp", f.ControllerAddr()); return err }); err != nil {
		t.Fatal(err)
	}
	fc := &fakeController{streams: make(chan *fakeStream, 16), msgs: make(chan *pb.ConnectRequest, 1024)}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})),
		grpc.ForceServerCodec(rawCodec{}))
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "mpfleet.v1.AgentService",
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{
			StreamName: "Connect", ServerStreams: true, ClientStreams: true, Handler: fc.connect,
		}},
	}, fc)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return fc
}

// stream waits for the next agent connection.
func (fc *fakeController) stream(t *testing.T) *fakeStream {
	t.Helper()
	select {
	case s := <-fc.streams:
		return s
	case <-time.After(20 * time.Second):
		t.Fatal("the agent did not connect to the fake controller within 20 s")
		return nil
	}
}

// wait waits for a message from the agent that match accepts.
func (fc *fakeController) wait(t *testing.T, what string, match func(*pb.ConnectRequest) bool) *pb.ConnectRequest {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case m := <-fc.msgs:
			if match(m) {
				return m
			}
		case <-deadline:
			t.Fatalf("no %s from the agent within 20 s", what)
			return nil
		}
	}
}

// clientPolicy is the clients' policy of lab-two-links.yaml.
func clientPolicy(t *testing.T) *pb.MultipathPolicy {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(repoRoot(), twoLinksFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(src), "\n---\n") {
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		// The manifest's short enum names (mpfleetctl's), as protojson
		// wants them.
		for short, full := range map[string]string{
			"signal": "ENDPOINT_FLAG_SIGNAL", "subflow": "ENDPOINT_FLAG_SUBFLOW", "backup": "ENDPOINT_FLAG_BACKUP",
			"fullmesh": "ENDPOINT_FLAG_FULLMESH", "laminar": "ENDPOINT_FLAG_LAMINAR",
			"ipv4": "ADDRESS_FAMILY_IPV4", "ipv6": "ADDRESS_FAMILY_IPV6",
		} {
			js = bytes.ReplaceAll(js, []byte(`"`+short+`"`), []byte(`"`+full+`"`))
		}
		var g struct {
			Name   string          `json:"name"`
			Policy json.RawMessage `json:"policy"`
		}
		if err := json.Unmarshal(js, &g); err != nil {
			t.Fatal(err)
		}
		if g.Name != "lab-clients" {
			continue
		}
		p := &pb.MultipathPolicy{}
		if err := protojson.Unmarshal(g.Policy, p); err != nil {
			t.Fatalf("%s: lab-clients: %v", twoLinksFile, err)
		}
		return p
	}
	t.Fatalf("%s has no lab-clients group", twoLinksFile)
	return nil
}

func desired(rev int64, p *pb.MultipathPolicy) *pb.ConnectResponse {
	return &pb.ConnectResponse{Kind: &pb.ConnectResponse_Desired{Desired: &pb.DesiredConfig{
		Assignment: pb.DesiredConfig_ASSIGNMENT_MANAGED, Group: "groups/lab-clients", Revision: rev, Policy: p,
	}}}
}

func isReport(st pb.SyncState, rev int64) func(*pb.ConnectRequest) bool {
	return func(m *pb.ConnectRequest) bool {
		r := m.GetReport()
		return r != nil && r.GetSyncState() == st && r.GetAppliedRevision() == rev
	}
}

func isFailedEvent(substr string) func(*pb.ConnectRequest) bool {
	return func(m *pb.ConnectRequest) bool {
		ev := m.GetEvent()
		return ev != nil && ev.GetKind() == pb.AgentEvent_KIND_APPLY_FAILED && strings.Contains(ev.GetMessage(), substr)
	}
}

// TestE2EAgentRefusesBadConfig runs the real agent against a fake
// controller (the real one only ever sends validated policies) that sends
// it bad desired configurations and bytes that are no message at all. The
// agent refuses each, reports FAILED with the reason, and leaves the kernel
// as its last good configuration made it; then it takes a good one.
func TestE2EAgentRefusesBadConfig(t *testing.T) {
	f := newBareFleet(t)
	fc := f.startFake(t)
	f.startAgent(lab.Client)
	s := fc.stream(t)
	if s.hello.GetHostId() != f.HostID(lab.Client) {
		t.Fatalf("hello from %q", s.hello.GetHostId())
	}
	good := clientPolicy(t)
	if err := s.send(desired(1, good)); err != nil {
		t.Fatal(err)
	}
	fc.wait(t, "IN_SYNC report at revision 1", isReport(pb.SyncState_SYNC_STATE_IN_SYNC, 1))
	f.waitKernel(t, lab.Client, declared[twoLinksFile][lab.Client])
	before, err := readKernel(f.Lab, lab.Client)
	if err != nil {
		t.Fatal(err)
	}
	unchanged := func(t *testing.T) {
		t.Helper()
		// Past a resync: the agent keeps the last good state.
		time.Sleep(resyncInterval + 200*time.Millisecond)
		after, err := readKernel(f.Lab, lab.Client)
		if err != nil {
			t.Fatal(err)
		}
		if after.String() != before.String() {
			t.Errorf("kernel changed:\n%s", lineDiff(before.String(), after.String()))
		}
		if err := f.Exited(); err != nil {
			t.Fatal(err)
		}
	}

	// Each would change the kernel if applied: more subflows than the
	// kernel allows, and endpoints on every interface.
	widen := func(p *pb.MultipathPolicy) {
		p.Endpoints = append(p.Endpoints, &pb.EndpointRule{Interface: "*", Flags: []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SUBFLOW}})
	}
	cases := []struct {
		name   string
		msg    func() *pb.ConnectResponse
		reason string // in the APPLY_FAILED event's message
	}{
		{"subflows above the kernel maximum", func() *pb.ConnectResponse {
			p := proto.Clone(good).(*pb.MultipathPolicy)
			widen(p)
			p.Limits.Subflows = proto.Uint32(99)
			return desired(2, p)
		}, "limits.subflows"},
		{"signal with fullmesh", func() *pb.ConnectResponse {
			p := proto.Clone(good).(*pb.MultipathPolicy)
			widen(p)
			p.Endpoints[0].Flags = []pb.EndpointFlag{pb.EndpointFlag_ENDPOINT_FLAG_SIGNAL, pb.EndpointFlag_ENDPOINT_FLAG_FULLMESH}
			return desired(3, p)
		}, "FULLMESH"},
		{"routing table range with reserved tables", func() *pb.ConnectResponse {
			p := proto.Clone(good).(*pb.MultipathPolicy)
			p.Routing.TableMin, p.Routing.TableMax = 250, 260
			return desired(4, p)
		}, "routing"},
		{"no group name and revision 0", func() *pb.ConnectResponse {
			m := desired(0, good)
			m.GetDesired().Group = "lab-clients"
			return m
		}, "desired.group"},
		{"unknown assignment", func() *pb.ConnectResponse {
			m := desired(5, good)
			m.GetDesired().Assignment = 42
			return m
		}, "assignment"},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			if err := s.send(c.msg()); err != nil {
				t.Fatal(err)
			}
			ev := fc.wait(t, "APPLY_FAILED event naming "+c.reason, isFailedEvent(c.reason)).GetEvent()
			t.Logf("refused: %s", ev.GetMessage())
			fc.wait(t, "FAILED report", isReport(pb.SyncState_SYNC_STATE_FAILED, 1))
			unchanged(t)
		})
	}

	t.Run("bytes_that_are_no_message", func(t *testing.T) {
		// A field of wire type 7, which does not exist: unparseable.
		if err := s.send(bytes.Repeat([]byte{0xff}, 64)); err != nil {
			t.Fatal(err)
		}
		s = fc.stream(t) // the agent ends the stream and connects again
		t.Logf("the agent reconnected; its hello says revision %d applied", s.hello.GetAppliedRevision())
		if s.hello.GetAppliedRevision() != 1 {
			t.Errorf("hello after the garbage: applied revision %d, want 1", s.hello.GetAppliedRevision())
		}
		unchanged(t)
	})

	t.Run("message_over_the_size_limit", func(t *testing.T) {
		p := proto.Clone(good).(*pb.MultipathPolicy)
		widen(p)
		m := desired(6, p)
		m.GetDesired().ConflictingGroups = []string{strings.Repeat("x", 5<<20)}
		if err := s.send(m); err != nil {
			t.Fatal(err)
		}
		s = fc.stream(t)
		ev := fc.wait(t, "APPLY_FAILED event about the size", isFailedEvent("limit")).GetEvent()
		t.Logf("refused: %s", ev.GetMessage())
		unchanged(t)
	})

	t.Run("good_again", func(t *testing.T) {
		p := proto.Clone(good).(*pb.MultipathPolicy)
		p.Sysctls.CloseTimeout = proto.Uint32(31)
		if err := s.send(desired(7, p)); err != nil {
			t.Fatal(err)
		}
		fc.wait(t, "IN_SYNC report at revision 7", isReport(pb.SyncState_SYNC_STATE_IN_SYNC, 7))
		w := declared[twoLinksFile][lab.Client]
		w.sysctls = map[string]string{"close_timeout": "31"}
		f.waitKernel(t, lab.Client, w)
	})
}
