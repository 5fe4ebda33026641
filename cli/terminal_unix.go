//go:build aix || darwin || dragonfly || freebsd || linux || netbsd || openbsd || solaris || zos

package cli

import "golang.org/x/sys/unix"

// terminalWidth returns the width in columns of the terminal fd refers to
// (0 when the terminal does not say), and false when fd is not a terminal.
func terminalWidth(fd uintptr) (int, bool) {
	ws, err := unix.IoctlGetWinsize(int(fd), unix.TIOCGWINSZ)
	if err != nil {
		return 0, false
	}
	return int(ws.Col), true
}
