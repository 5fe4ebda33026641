//go:build !unix

package agent

import (
	"fmt"
	"os"
)

// lockStateDir only checks the directory where flock does not exist: the
// agent needs Linux to run.
func lockStateDir(dir string, create bool) (release func(), err error) {
	if create {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
	} else if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	return func() {}, nil
}
