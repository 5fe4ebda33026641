package loadgen

import (
	"fmt"
	"os"
	"strings"

	"github.com/mpfleet/mpfleet/internal/policy"
)

// ReadTokens reads a token file: either one line holding a token every
// agent sends, or lines "HOST TOKEN", one per host (a host not listed
// sends none). Blank lines and lines starting with '#' are skipped.
func ReadTokens(path string) (func(host string) string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	return ParseTokens(string(b))
}

// ParseTokens parses the text of a token file (see ReadTokens).
func ParseTokens(text string) (func(host string) string, error) {
	var lines [][]string
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) > 2 {
			return nil, fmt.Errorf("token file line %d: %d fields; want TOKEN or HOST TOKEN", n+1, len(f))
		}
		if len(f) == 2 && !policy.ValidHostID(f[0]) {
			return nil, fmt.Errorf("token file line %d: %q is not a valid host id", n+1, f[0])
		}
		lines = append(lines, f)
	}
	switch {
	case len(lines) == 0:
		return nil, fmt.Errorf("token file: no token")
	case len(lines) == 1 && len(lines[0]) == 1:
		tok := lines[0][0]
		return func(string) string { return tok }, nil
	}
	byHost := map[string]string{}
	for i, f := range lines {
		if len(f) != 2 {
			return nil, fmt.Errorf("token file: entry %d has no host; with several tokens every line is HOST TOKEN", i+1)
		}
		if _, dup := byHost[f[0]]; dup {
			return nil, fmt.Errorf("token file: host %q listed twice", f[0])
		}
		byHost[f[0]] = f[1]
	}
	return func(host string) string { return byHost[host] }, nil
}
