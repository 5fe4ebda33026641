package floor

// The fan-out trigger and the runtime figures over HTTP, and the client a
// benchmark driver uses.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
)

// maxBody bounds a /fanout request's body.
const maxBody = 1 << 20

// Handler serves:
//
//	POST /fanout?group=G&revision=R   FanoutResult
//	GET  /runtime                     Runtime, after a forced GC
//
// The body of /fanout, if any, is a DesiredConfig (protobuf) whose group
// and revision the query sets; without one the DesiredConfig is a managed
// one with no policy. Assignment defaults to managed.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /fanout", func(w http.ResponseWriter, r *http.Request) {
		d, err := fanoutRequest(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, s.Fanout(d))
	})
	mux.HandleFunc("GET /runtime", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, s.Runtime())
	})
	return mux
}

// fanoutRequest reads the DesiredConfig of a /fanout request, naming the
// parameter at fault.
func fanoutRequest(r *http.Request) (*pb.DesiredConfig, error) {
	q := r.URL.Query()
	group := q.Get("group")
	if group == "" {
		return nil, errors.New("group: required")
	}
	rev, err := strconv.ParseInt(q.Get("revision"), 10, 64)
	if err != nil || rev <= 0 {
		return nil, fmt.Errorf("revision %q: want a positive integer", q.Get("revision"))
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	if len(body) > maxBody {
		return nil, fmt.Errorf("body: larger than %d bytes", maxBody)
	}
	d := &pb.DesiredConfig{}
	if err := proto.Unmarshal(body, d); err != nil {
		return nil, fmt.Errorf("body: not a DesiredConfig: %w", err)
	}
	d.Group, d.Revision = group, rev
	if d.GetAssignment() == pb.DesiredConfig_ASSIGNMENT_UNSPECIFIED {
		d.Assignment = pb.DesiredConfig_ASSIGNMENT_MANAGED
	}
	return d, nil
}

// Runtime is the process's Go runtime figures (runtime/metrics) after a
// forced GC, in bytes unless named otherwise.
type Runtime struct {
	Streams    int    `json:"streams"`
	Goroutines uint64 `json:"goroutines"`
	// HeapLive is the heap marked live by the GC just forced.
	HeapLive uint64 `json:"heap_live"`
	// HeapObjects and HeapUnused make the heap in use (spans holding
	// objects), HeapFree the heap free and not returned to the OS.
	HeapObjects uint64 `json:"heap_objects"`
	HeapUnused  uint64 `json:"heap_unused"`
	HeapFree    uint64 `json:"heap_free"`
	// Stacks are goroutine stacks (allocated from the heap); OSStacks the
	// threads' stacks allocated by the OS.
	Stacks   uint64 `json:"stacks"`
	OSStacks uint64 `json:"os_stacks"`
	// Metadata is the runtime's own (spans, caches, GC); Other the rest
	// the runtime maps and does not release.
	Metadata uint64 `json:"metadata"`
	Other    uint64 `json:"other"`
	// Total is every byte the runtime maps, less what it released to the
	// OS.
	Total uint64 `json:"total"`
}

// HeapInUse is the heap in spans holding objects.
func (r Runtime) HeapInUse() uint64 { return r.HeapObjects + r.HeapUnused }

// Runtime forces a GC and reads the runtime's figures.
func (s *Server) Runtime() Runtime {
	runtime.GC()
	samples := []metrics.Sample{
		{Name: "/sched/goroutines:goroutines"},
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
		{Name: "/memory/classes/os-stacks:bytes"},
		{Name: "/memory/classes/total:bytes"},
	}
	var meta, other []metrics.Sample
	for _, d := range metrics.All() {
		switch {
		case strings.HasPrefix(d.Name, "/memory/classes/metadata/"):
			meta = append(meta, metrics.Sample{Name: d.Name})
		case strings.HasPrefix(d.Name, "/memory/classes/other:"), strings.HasPrefix(d.Name, "/memory/classes/profiling/"):
			other = append(other, metrics.Sample{Name: d.Name})
		}
	}
	all := append(append(samples, meta...), other...)
	metrics.Read(all)
	v := func(i int) uint64 {
		if all[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return all[i].Value.Uint64()
	}
	sum := func(from, to int) (n uint64) {
		for i := from; i < to; i++ {
			n += v(i)
		}
		return n
	}
	n := len(samples)
	return Runtime{
		Streams: s.Streams(), Goroutines: v(0), HeapLive: v(1),
		HeapObjects: v(2), HeapUnused: v(3), HeapFree: v(4),
		Stacks: v(6), OSStacks: v(7), Total: v(8) - v(5),
		Metadata: sum(n, n+len(meta)), Other: sum(n+len(meta), len(all)),
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// Client is a driver's client of a Server's Handler at URL
// (http://host:port).
type Client struct {
	URL string
}

// Fanout sends d (its group and revision included) to every stream and
// returns when every send returned.
func (c Client) Fanout(ctx context.Context, d *pb.DesiredConfig) (FanoutResult, error) {
	var res FanoutResult
	body, err := proto.Marshal(d)
	if err != nil {
		return res, err
	}
	q := url.Values{"group": {d.GetGroup()}, "revision": {strconv.FormatInt(d.GetRevision(), 10)}}
	err = c.do(ctx, http.MethodPost, "/fanout?"+q.Encode(), body, &res)
	return res, err
}

// Runtime returns the server's runtime figures after a forced GC.
func (c Client) Runtime(ctx context.Context) (Runtime, error) {
	var rt Runtime
	err := c.do(ctx, http.MethodGet, "/runtime", nil, &rt)
	return rt, err
}

func (c Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	var answer bytes.Buffer
	if err := Request(ctx, http.DefaultClient, method, c.URL+path, body, &answer); err != nil {
		return err
	}
	return json.Unmarshal(answer.Bytes(), out)
}

// Request sends method url with body (nil: none) through c and copies the
// answer's body to w; an answer other than 200 OK is an error naming it.
func Request(ctx context.Context, c *http.Client, method, url string, body []byte, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, strings.TrimSpace(string(b)))
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	return nil
}
