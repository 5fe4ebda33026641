//go:build unix

package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockStateDir takes the state dir's lock: an exclusive flock on dir/lock,
// which holds the pid of its holder. A running agent holds it, so that
// --cleanup (and a second agent) cannot work on the same state dir at the
// same time; the kernel drops it when the holder exits, however it exits.
// With create the directory is made if missing; without, a missing
// directory fails wrapping os.ErrNotExist. A lock another holds fails
// wrapping ErrStateDirInUse.
func lockStateDir(dir string, create bool) (release func(), err error) {
	if create {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		_ = f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := ""
			if pid := strings.TrimSpace(string(b)); pid != "" {
				holder = " (pid " + pid + ")"
			}
			return nil, fmt.Errorf("state dir %s: locked by a running mpfleet-agent%s: %w", dir, holder, ErrStateDirInUse)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// The pid is for people; the flock is the lock.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { _ = f.Close() }, nil
}
