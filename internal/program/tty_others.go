//go:build !linux

package program

import "os"

// isTerminal reports whether f may be a terminal: a character device.
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
