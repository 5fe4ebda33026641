package controller

import (
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// deafStream is an agent stream whose sends, when deaf, are held until the
// stream ends, as gRPC flow control holds them for an agent that does not
// read its stream.
type deafStream struct {
	pb.AgentService_ConnectServer // nil: only Send is used
	deaf                          bool
	entered                       chan string // a send started (the session's id)
	ended                         chan struct{}
	id                            string

	mu   sync.Mutex
	sent []uint64 // confirm nonces that went out
}

func (d *deafStream) Send(m *pb.ConnectResponse) error {
	d.entered <- d.id
	if d.deaf {
		<-d.ended
		return errors.New("stream ended")
	}
	d.mu.Lock()
	d.sent = append(d.sent, m.GetConfirmed().GetNonce())
	d.mu.Unlock()
	return nil
}

// TestSendPoolSlowAgents: agents that do not read their streams hold every
// sender the pool may start, and a send to another agent still goes out —
// after slowSend, not after the send timeout; the deaf streams end with
// DEADLINE_EXCEEDED once the timeout passes.
func TestSendPoolSlowAgents(t *testing.T) {
	h := &hub{log: slog.New(slog.DiscardHandler)}
	const timeout = 4 * time.Second
	p := newSendPool(h)
	p.max, p.timeout = 2, timeout
	h.sends = p
	entered := make(chan string, 16)
	type ended struct {
		id  string
		err error
	}
	endings := make(chan ended, 4)
	session := func(id string, deaf bool) (*session, *deafStream) {
		d := &deafStream{id: id, deaf: deaf, entered: entered, ended: make(chan struct{})}
		s := &session{id: id, sends: p, stream: d, acks: newEventAcks(0, nil), served: true}
		var once sync.Once
		s.end = func(cause error) {
			once.Do(func() {
				endings <- ended{id, cause}
				close(d.ended)
			})
		}
		return s, d
	}
	for _, id := range []string{"deaf-1", "deaf-2"} {
		s, _ := session(id, true)
		s.queueConfirm(1)
		p.kick(s)
	}
	held := map[string]bool{}
	for len(held) < 2 {
		select {
		case id := <-entered:
			held[id] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("the deaf agents' sends did not start: %v", held)
		}
	}
	start := time.Now()
	s, d := session("listens", false)
	s.queueConfirm(7)
	p.kick(s)
	select {
	case id := <-entered:
		if id != "listens" {
			t.Fatalf("send to %s started, want the listening agent's", id)
		}
	case <-time.After(timeout / 2):
		t.Fatal("the listening agent's send waited for the deaf agents' sends (slowSend is 1s, the timeout 4s)")
	}
	if waited := time.Since(start); waited < slowSend/2 {
		t.Errorf("the listening agent's send started after %v, with every sender held: want about slowSend (%v)", waited, slowSend)
	}
	for range 2 {
		select {
		case e := <-endings:
			if e.id == "listens" {
				t.Fatalf("the listening agent's stream ended: %v", e.err)
			}
			if status.Code(e.err) != codes.DeadlineExceeded {
				t.Errorf("%s ended with %v, want DEADLINE_EXCEEDED", e.id, e.err)
			}
		case <-time.After(2 * timeout):
			t.Fatal("a deaf agent's stream was not ended after the send timeout")
		}
	}
	if elapsed := time.Since(start); elapsed < timeout-slowSend {
		t.Errorf("deaf streams ended after %v, before the send timeout %v", elapsed, timeout)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.sent) != 1 || d.sent[0] != 7 {
		t.Errorf("the listening agent was sent %v, want confirm 7", d.sent)
	}
	// Every sender is gone once there is nothing to send.
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		n, running, watching := p.senders, len(p.running), p.watching
		p.mu.Unlock()
		if n == 0 && running == 0 && !watching {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("senders left: %d counted, %d running, watchdog %v", n, running, watching)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
