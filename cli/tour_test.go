package cli

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/credentials/insecure"

	"github.com/mpfleet/mpfleet/internal/nstest"
)

// tourStep is one command line of the README's quick tour.
type tourStep struct {
	line string
	skip string // why the test does not run it, from a tour:skip marker
}

// tourSkipRE is a marker naming a tour command (by its start) the test
// does not run, and why.
var tourSkipRE = regexp.MustCompile(`^<!-- tour:skip (.+?): (.+) -->$`)

// readTour returns the command lines of the README's quick tour: the sh
// block between <!-- tour:begin --> and <!-- tour:end -->, comments and
// blank lines dropped, each with the reason of the tour:skip marker whose
// command prefix it starts with.
func readTour(t *testing.T, readme string) []tourStep {
	t.Helper()
	b, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	var (
		steps   []tourStep
		skips   = map[string]string{}
		in, sh  bool
		done    bool
		touched = map[string]bool{}
	)
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "<!-- tour:begin"):
			in = true
			continue
		case strings.HasPrefix(line, "<!-- tour:end"):
			in, done = false, true
			continue
		case !in:
			continue
		}
		if m := tourSkipRE.FindStringSubmatch(line); m != nil {
			skips[m[1]] = m[2]
			continue
		}
		if strings.HasPrefix(line, "```") {
			sh = !sh
			continue
		}
		if !sh {
			continue
		}
		cmd := strings.TrimSpace(stripShellComment(line))
		if cmd == "" {
			continue
		}
		st := tourStep{line: cmd}
		for prefix, why := range skips {
			if strings.HasPrefix(cmd, prefix) {
				st.skip = why
				touched[prefix] = true
			}
		}
		steps = append(steps, st)
	}
	if !done || len(steps) == 0 {
		t.Fatalf("%s: no tour between <!-- tour:begin --> and <!-- tour:end -->", readme)
	}
	for prefix := range skips {
		if !touched[prefix] {
			t.Errorf("%s: tour:skip %q matches no line of the tour", readme, prefix)
		}
	}
	return steps
}

// stripShellComment drops a "# comment" that starts a line or follows a
// blank, outside quotes.
func stripShellComment(s string) string {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '#' && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t'):
			return s[:i]
		}
	}
	return s
}

// tourWords splits a command line as a POSIX shell does for the subset
// the tour uses: blanks, single and double quotes (no escapes).
func tourWords(s string) ([]string, error) {
	var (
		out []string
		cur strings.Builder
		in  bool
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '\'', '"':
			j := strings.IndexByte(s[i+1:], c)
			if j < 0 {
				return nil, errors.New("unterminated quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			in = true
		case ' ', '\t':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out, nil
}

// TestQuickTour runs the README's quick tour as written: the controller
// in-process (as mpfleet-controller runs it, on embedded etcd), every
// mpfleetctl line in-process against it, a line's input from the real
// command before its pipe (sed), and the grpcurl lines with the pinned
// grpcurl. A line that fails fails the test; a line the test does not
// understand fails it too, unless a tour:skip marker says why it is not run.
func TestQuickTour(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	steps := readTour(t, filepath.Join(root, "README.md"))
	t.Chdir(root) // the tour's paths are relative to the repository

	const tourAddr = "127.0.0.1:7400"
	var (
		addr       string
		ran        []string
		noGRPCurl  bool
		grpcurlBin = filepath.Join(root, ".tools", "bin", "grpcurl")
	)
	if p := os.Getenv("MPFLEET_GRPCURL"); p != "" {
		grpcurlBin = p
	}
	for _, st := range steps {
		if st.skip != "" {
			t.Logf("not run: %s (%s)", st.line, st.skip)
			continue
		}
		var stdin string
		line := st.line
		if left, right, ok := strings.Cut(line, " | "); ok {
			words, err := tourWords(left)
			if err != nil || len(words) == 0 || words[0] != "sed" {
				t.Fatalf("tour line %q: only sed may feed a pipe here (%v)", line, err)
			}
			out, err := exec.Command(words[0], words[1:]...).Output()
			if err != nil {
				t.Fatalf("tour line %q: %s: %v", line, left, err)
			}
			stdin, line = string(out), right
		}
		words, err := tourWords(line)
		if err != nil || len(words) == 0 {
			t.Fatalf("tour line %q: %v", line, err)
		}
		switch words[0] {
		case "bin/mpfleet-controller":
			if words[len(words)-1] != "&" {
				t.Fatalf("tour line %q: the controller should run in the background", line)
			}
			args := slices.Clone(words[1 : len(words)-1])
			if i := slices.Index(args, "--data-dir"); i >= 0 && i+1 < len(args) {
				args = slices.Delete(args, i, i+2) // startController gives a temporary one
			}
			addr = startController(t, insecure.NewCredentials(), args...)
		case "bin/mpfleetctl":
			if addr == "" {
				t.Fatalf("tour line %q runs before the controller is started", line)
			}
			r := runCLI(t, stdin, map[string]string{"MPFLEET_CONTROLLER": addr}, words[1:]...)
			if r.err != nil {
				t.Fatalf("tour line %q failed (exit %d): %v\nstdout:\n%s\nstderr:\n%s", st.line, r.code(), r.err, r.stdout, r.stderr)
			}
			t.Logf("$ %s\n%s", st.line, r.stdout)
		case "grpcurl":
			if _, err := os.Stat(grpcurlBin); err != nil {
				noGRPCurl = true
				continue
			}
			args := slices.Clone(words[1:])
			for i, w := range args {
				if w == tourAddr {
					args[i] = addr
				}
			}
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(grpcurlBin, args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("tour line %q failed: %v\n%s%s", st.line, err, stdout.String(), stderr.String())
			}
		default:
			t.Fatalf("tour line %q: the test does not know how to run it; run it here or add a tour:skip marker with the reason", st.line)
		}
		ran = append(ran, st.line)
	}

	// The tour's point: a second revision to diff, and live matching the
	// file before it.
	for _, want := range []string{"bin/mpfleetctl diff lab 1 2", "bin/mpfleetctl diff -f deploy/examples/two-links.yaml"} {
		if !slices.Contains(ran, want) {
			t.Errorf("the tour no longer runs %q", want)
		}
	}
	if noGRPCurl {
		nstest.Skip(t, "grpcurl lines of the tour not run: grpcurl not installed (make tools, or set MPFLEET_GRPCURL)")
	}
}
