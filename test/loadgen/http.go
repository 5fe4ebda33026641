package loadgen

// The receipts over HTTP, and the client a benchmark driver uses.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// maxWait bounds one /wait request; a client asks again.
const maxWait = time.Minute

// Handler serves the fleet's receipts:
//
//	GET /status                                   Status
//	GET /receipts?group=G&revision=R              [unix nanos], one per agent
//	GET /wait/revision?group=G&revision=R[&agents=N][&timeout=D]   RevisionStatus
//	GET /wait/connected?[agents=N&][since=UNIX_NANO&][timeout=D]   Status
//
// A wait answers 200 once the condition holds, 504 (with the body as it
// stands) when the timeout (default and at most 1m) passes first.
func (f *Fleet) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, f.Status())
	})
	mux.HandleFunc("GET /receipts", func(w http.ResponseWriter, r *http.Request) {
		group, rev, err := revisionQuery(r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		times := f.Receipts(group, rev)
		if times == nil {
			times = []int64{}
		}
		writeJSON(w, http.StatusOK, times)
	})
	mux.HandleFunc("GET /wait/revision", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		group, rev, err := revisionQuery(q)
		n := 0
		if err == nil {
			n, err = intQuery(q, "agents", 0)
		}
		var ctx context.Context
		var cancel context.CancelFunc
		if err == nil {
			ctx, cancel, err = waitContext(r)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		defer cancel()
		st, err := f.WaitRevision(ctx, group, rev, n)
		writeJSON(w, waitCode(err), st)
	})
	mux.HandleFunc("GET /wait/connected", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		n, err := intQuery(q, "agents", 0)
		var since int64
		if err == nil {
			since, err = int64Query(q, "since", 0)
		}
		var ctx context.Context
		var cancel context.CancelFunc
		if err == nil {
			ctx, cancel, err = waitContext(r)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		defer cancel()
		var t time.Time
		if since != 0 {
			t = time.Unix(0, since)
		}
		err = f.WaitConnected(ctx, n, t)
		writeJSON(w, waitCode(err), f.Status())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func waitCode(err error) int {
	if err != nil {
		return http.StatusGatewayTimeout
	}
	return http.StatusOK
}

func revisionQuery(q url.Values) (string, int64, error) {
	group := q.Get("group")
	if group == "" {
		return "", 0, errors.New("group: required")
	}
	rev, err := int64Query(q, "revision", 0)
	if err == nil && rev <= 0 {
		err = errors.New("revision: required, positive")
	}
	return group, rev, err
}

func int64Query(q url.Values, name string, def int64) (int64, error) {
	s := q.Get(name)
	if s == "" {
		return def, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%s: %q is not a non-negative integer", name, s)
	}
	return v, nil
}

func intQuery(q url.Values, name string, def int) (int, error) {
	v, err := int64Query(q, name, int64(def))
	return int(v), err
}

func waitContext(r *http.Request) (context.Context, context.CancelFunc, error) {
	d := maxWait
	if s := r.URL.Query().Get("timeout"); s != "" {
		v, err := time.ParseDuration(s)
		if err != nil || v <= 0 {
			return nil, nil, fmt.Errorf("timeout: %q is not a positive duration", s)
		}
		d = min(v, maxWait)
	}
	ctx, cancel := context.WithTimeout(r.Context(), d)
	return ctx, cancel, nil
}

// Client reads a loadgen process's receipts over HTTP.
type Client struct {
	// URL is what the process printed after "status ", e.g.
	// http://127.0.0.1:40123.
	URL string
}

func (c Client) get(ctx context.Context, path string, q url.Values, v any) (int, error) {
	u := c.URL + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusGatewayTimeout {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return resp.StatusCode, fmt.Errorf("GET %s: %s: %s", u, resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return resp.StatusCode, fmt.Errorf("GET %s: %w", u, err)
	}
	return resp.StatusCode, nil
}

// Status returns the process's summary.
func (c Client) Status(ctx context.Context) (Status, error) {
	var s Status
	_, err := c.get(ctx, "/status", nil, &s)
	return s, err
}

// Receipts returns every agent's receipt time of group's revision, Unix
// nanoseconds.
func (c Client) Receipts(ctx context.Context, group string, rev int64) ([]int64, error) {
	var times []int64
	_, err := c.get(ctx, "/receipts", url.Values{"group": {group}, "revision": {strconv.FormatInt(rev, 10)}}, &times)
	return times, err
}

// WaitRevision waits until n of the process's agents (n <= 0: all) hold
// group's revision, or ctx ends.
func (c Client) WaitRevision(ctx context.Context, group string, rev int64, n int) (RevisionStatus, error) {
	q := url.Values{"group": {group}, "revision": {strconv.FormatInt(rev, 10)}, "agents": {strconv.Itoa(max(n, 0))}}
	for {
		var st RevisionStatus
		code, err := c.get(ctx, "/wait/revision", q, &st)
		if err == nil && code == http.StatusOK {
			return st, nil
		}
		if ctx.Err() != nil {
			return st, fmt.Errorf("%s revision %d: %d agents hold it: %w", group, rev, st.Agents, ctx.Err())
		}
		if err != nil {
			return st, err
		}
	}
}

// WaitConnected waits until n of the process's agents (n <= 0: all) are
// served by sessions begun after since (zero: any), or ctx ends.
func (c Client) WaitConnected(ctx context.Context, n int, since time.Time) (Status, error) {
	q := url.Values{"agents": {strconv.Itoa(max(n, 0))}}
	if !since.IsZero() {
		q.Set("since", strconv.FormatInt(since.UnixNano(), 10))
	}
	for {
		var st Status
		code, err := c.get(ctx, "/wait/connected", q, &st)
		if err == nil && code == http.StatusOK {
			return st, nil
		}
		if ctx.Err() != nil {
			return st, fmt.Errorf("%d of %d agents connected: %w", st.Connected, st.Agents, ctx.Err())
		}
		if err != nil {
			return st, err
		}
	}
}
