//go:build linux

package mptcp

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/internal/nstest"
)

// knownSysctls are the net.mptcp sysctls of DESIGN.md; which of them a
// kernel has depends on its version.
var knownSysctls = []string{
	"enabled",
	"add_addr_timeout",
	"checksum_enabled",
	"allow_join_initial_addr_port",
	"stale_loss_cnt",
	"pm_type",       // deprecated in 6.15
	"path_manager",  // 6.15
	"scheduler",     // 6.6
	"close_timeout", // 6.7
	"blackhole_timeout",
	"syn_retrans_before_tcp_fallback", // 6.14
	"available_schedulers",
	"available_path_managers", // 6.15
}

// do runs fn inside ns and fails the test on error.
func do(t *testing.T, ns *nstest.NS, fn func() error) {
	t.Helper()
	if err := ns.Do(fn); err != nil {
		t.Fatalf("in netns %s: %v", ns.Name, err)
	}
}

func TestIntegrationSysctls(t *testing.T) {
	ns := nstest.New(t)
	hostTimeout, hostErr := ReadSysctl("add_addr_timeout")
	do(t, ns, func() error {
		all, err := Sysctls()
		if err != nil {
			return err
		}
		var missing []string
		for _, name := range knownSysctls {
			v, err := ReadSysctl(name)
			_, listed := all[name]
			switch {
			case err == nil:
				if !listed || all[name] != v {
					t.Errorf("%s: ReadSysctl %q, Sysctls %q (listed: %v)", name, v, all[name], listed)
				}
			case errors.Is(err, ErrSysctlUnsupported):
				if listed {
					t.Errorf("%s: unsupported but listed by Sysctls", name)
				}
				missing = append(missing, name)
			default:
				t.Errorf("%s: %v", name, err)
			}
		}
		if len(missing) > 0 {
			t.Logf("this kernel lacks net.mptcp.%s", strings.Join(missing, ", net.mptcp."))
		}
		if all["enabled"] != "1" {
			t.Errorf("net.mptcp.enabled = %q in a new namespace", all["enabled"])
		}

		if err := WriteSysctl("add_addr_timeout", "61"); err != nil {
			return err
		}
		if v, err := ReadSysctl("net.mptcp.add_addr_timeout"); err != nil || v != "61" {
			t.Errorf("after write: %q, %v", v, err)
		}
		for name, bad := range map[string]string{"enabled": "7", "scheduler": "no-such-scheduler", "path_manager": "no-such-pm"} {
			if slices.Contains(missing, name) {
				continue
			}
			if err := WriteSysctl(name, bad); !errors.Is(err, ErrInvalid) {
				t.Errorf("write %s=%s: %v, want ErrInvalid", name, bad, err)
			}
		}
		if err := WriteSysctl("available_schedulers", "x"); !errors.Is(err, os.ErrPermission) {
			t.Errorf("write a read-only sysctl: %v", err)
		}
		if _, err := ReadSysctl("no_such_knob"); !errors.Is(err, ErrSysctlUnsupported) || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("read a missing sysctl: %v", err)
		}
		if err := WriteSysctl("no_such_knob", "1"); !errors.Is(err, ErrSysctlUnsupported) {
			t.Errorf("write a missing sysctl: %v", err)
		}
		return nil
	})
	// The sysctls are per namespace: the test's own did not change.
	if v, err := ReadSysctl("add_addr_timeout"); v != hostTimeout || (err == nil) != (hostErr == nil) {
		t.Errorf("add_addr_timeout outside the namespace went from %q (%v) to %q (%v)", hostTimeout, hostErr, v, err)
	}
}
