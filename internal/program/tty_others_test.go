//go:build !linux

package program_test

import (
	"os"
	"testing"
)

// openTerminal returns nil: the test opens pseudo-terminals on Linux only.
func openTerminal(*testing.T) *os.File { return nil }
