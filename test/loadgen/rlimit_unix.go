//go:build unix

package loadgen

import (
	"fmt"
	"syscall"
)

// RaiseFileLimit raises the soft limit of open files to the hard limit (an
// agent holds a socket or two) and returns the new soft limit.
func RaiseFileLimit() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("read the open files limit: %w", err)
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return 0, fmt.Errorf("raise the open files limit to %d: %w", l.Max, err)
		}
	}
	return uint64(l.Cur), nil //nolint:unconvert // int64 on some BSDs
}
