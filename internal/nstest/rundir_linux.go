package nstest

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

const runDir = "/run/netns"

// PrepareRunDir makes /run/netns a shared mount point, as `ip netns add` does
// the first time it runs. Were that done later, over namespaces already
// mounted there, its bind mount would hide their mounts and they could no
// longer be deleted (EBUSY). It does nothing when /run/netns is a mount point
// already or anything is mounted in it, so it never hides anyone's
// namespaces, and it holds a lock so that concurrent test processes do not
// both mount.
func PrepareRunDir() error {
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile("/run/mpfleet-netns.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN) //nolint:errcheck // closing releases it anyway
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(mounts)) {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == runDir || strings.HasPrefix(f[4], runDir+"/")) {
			return nil
		}
	}
	if err := unix.Mount(runDir, runDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind mount %s: %w", runDir, err)
	}
	if err := unix.Mount("", runDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", runDir, err)
	}
	return nil
}
