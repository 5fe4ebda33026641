//go:build !(aix || darwin || dragonfly || freebsd || linux || netbsd || openbsd || solaris || zos)

package cli

// terminalWidth reports no terminal: on these systems progress is always
// printed as plain lines.
func terminalWidth(uintptr) (int, bool) { return 0, false }
