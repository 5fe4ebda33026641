package traffic

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Run is the mpfleet-traffic command:
//
//	mpfleet-traffic serve --listen ADDR:PORT [--once] [--json]
//	mpfleet-traffic send --to ADDR:PORT --bytes N [--bind ADDR] [--seed N] [--tcp] [--json]
//
// send exits non-zero unless the receiver verified every byte.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := func() {
		fmt.Fprint(stderr, `usage:
  mpfleet-traffic serve --listen ADDR:PORT [--once] [--json]
  mpfleet-traffic send --to ADDR:PORT --bytes N [--bind ADDR] [--seed N] [--tcp] [--json]

serve receives transfers over Multipath TCP, verifies every byte and reports
each (to the sender and on stdout). send sends N bytes of a seeded
pseudo-random stream and prints the receiver's report: bytes, duration,
throughput, longest stall, whether the connection used MPTCP, and whether
every byte was verified. Run "mpfleet-traffic COMMAND -h" for the flags.
`)
	}
	if len(args) == 0 {
		usage()
		return errors.New("no command")
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("mpfleet-traffic "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	jsonOut := fs.Bool("json", false, "print reports as JSON, one per line")
	var mu sync.Mutex
	print := func(r Report) {
		mu.Lock()
		defer mu.Unlock()
		if *jsonOut {
			b, _ := json.Marshal(r)
			fmt.Fprintln(stdout, string(b))
			return
		}
		fmt.Fprintf(stdout, "%s -> %s: %s\n", r.From, r.To, r)
	}
	switch cmd {
	case "serve":
		listen := fs.String("listen", "", "address and port to listen on, e.g. 198.18.11.2:5201 (required)")
		once := fs.Bool("once", false, "exit after one transfer, with its outcome")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if *listen == "" {
			fs.Usage()
			return errors.New("serve: --listen is required")
		}
		ln, err := Listen(ctx, *listen)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "mpfleet-traffic: listening on %s (MPTCP)\n", ln.Addr())
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var last Report
		err = Serve(ctx, ln, func(r Report) {
			print(r)
			if *once {
				last = r
				cancel()
			}
		})
		if err == nil && *once && !last.Verified {
			err = fmt.Errorf("%w: %s", ErrNotVerified, last.Error)
		}
		return err
	case "send":
		to := fs.String("to", "", "receiver address and port, e.g. 198.18.11.2:5201 (required)")
		size := fs.String("bytes", "", "bytes to send: a number with an optional k, M, G (10^3...) or Ki, Mi, Gi suffix (required)")
		bind := fs.String("bind", "", "local address of the first subflow")
		seed := fs.Uint64("seed", 0, "seed of the stream (default random)")
		plain := fs.Bool("tcp", false, "use plain TCP instead of MPTCP")
		timeout := fs.Duration("timeout", 0, "give up after this long (default: only after 30s without progress)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		n, err := ParseBytes(*size)
		if *to == "" || err != nil {
			fs.Usage()
			return errors.Join(errors.New("send: --to and --bytes are required"), err)
		}
		if *timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, *timeout)
			defer cancel()
		}
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := Dial(dctx, *to, DialOptions{Bind: *bind, PlainTCP: *plain})
		dcancel()
		if err != nil {
			return err
		}
		r, err := Send(ctx, conn, SendOptions{Bytes: n, Seed: *seed})
		print(r)
		if !*plain && !r.MPTCP {
			// Go's MPTCP dialer retries any failure with plain TCP, and
			// the kernel falls back when the peer does not answer MPTCP.
			fmt.Fprintln(stderr, "mpfleet-traffic: warning: the connection is plain TCP, not MPTCP")
		}
		return err
	case "-h", "-help", "--help", "help":
		usage()
		return nil
	}
	usage()
	return fmt.Errorf("unknown command %q", cmd)
}

// ParseBytes parses a byte count: a number with an optional suffix k, M, G
// (powers of 1000) or Ki, Mi, Gi (powers of 1024), and an optional B.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "B")
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"k", 1e3}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("byte count %q: want a number such as 100M or 64Mi", s)
	}
	return n * mult, nil
}
