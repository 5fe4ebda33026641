package mptcp

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// sysctlDir holds the net.mptcp sysctls. /proc/sys/net shows the namespace
// of the thread that opens the file.
var sysctlDir = "/proc/sys/net/mptcp"

// sysctlPath checks name ("enabled" or "net.mptcp.enabled") and returns its
// file and short name.
func sysctlPath(name string) (string, string, error) {
	short := strings.TrimPrefix(name, "net.mptcp.")
	if short == "" || strings.ContainsAny(short, "./\x00") {
		return "", short, invalidf("bad sysctl name %q", name)
	}
	return filepath.Join(sysctlDir, short), short, nil
}

// ReadSysctl returns net.mptcp.<name> of the calling thread's network
// namespace, without its trailing newline. name may carry the "net.mptcp."
// prefix. A sysctl this kernel lacks gives ErrSysctlUnsupported
// (os.ErrNotExist).
func ReadSysctl(name string) (string, error) {
	p, short, err := sysctlPath(name)
	if err != nil {
		return "", fmt.Errorf("mptcp read sysctl: %w", err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", sysctlError("read", short, "", err)
	}
	return strings.TrimRight(string(b), "\n"), nil
}

// WriteSysctl sets net.mptcp.<name> of the calling thread's network
// namespace. A sysctl this kernel lacks gives ErrSysctlUnsupported; a value
// the kernel refuses (EINVAL, or ENOENT for an unknown scheduler or path
// manager), ErrInvalid.
func WriteSysctl(name, value string) error {
	p, short, err := sysctlPath(name)
	if err != nil {
		return fmt.Errorf("mptcp write sysctl: %w", err)
	}
	// No O_CREAT: procfs cannot create one, and a missing sysctl must read
	// as "not supported".
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return sysctlError("write", short, value, err)
	}
	_, werr := f.WriteString(value)
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr != nil {
		subject := "net.mptcp." + short + "=" + value
		if errors.Is(werr, syscall.EINVAL) || errors.Is(werr, syscall.ENOENT) || errors.Is(werr, syscall.ERANGE) {
			return fmt.Errorf("mptcp write sysctl %s: %w: %w", subject, ErrInvalid, werr)
		}
		return fmt.Errorf("mptcp write sysctl %s: %w", subject, werr)
	}
	return nil
}

// sysctlError maps an error opening a sysctl file.
func sysctlError(op, name, value string, err error) error {
	subject := "net.mptcp." + name
	if op == "write" {
		subject += "=" + value
	}
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("mptcp %s sysctl %s: %w", op, subject, ErrSysctlUnsupported)
	}
	return fmt.Errorf("mptcp %s sysctl %s: %w", op, subject, err)
}

// Sysctls returns every net.mptcp sysctl present in the calling thread's
// network namespace, by short name, values without trailing newline.
func Sysctls() (map[string]string, error) {
	ents, err := os.ReadDir(sysctlDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("mptcp read sysctls: %w: %w", ErrUnsupported, err)
		}
		return nil, fmt.Errorf("mptcp read sysctls: %w", err)
	}
	m := make(map[string]string, len(ents))
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		v, err := ReadSysctl(e.Name())
		if err != nil {
			return nil, err
		}
		m[e.Name()] = v
	}
	return m, nil
}
