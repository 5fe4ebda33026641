package mptcp

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeSysctls points the package at a directory of plain files.
func fakeSysctls(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for n, v := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := sysctlDir
	sysctlDir = dir
	t.Cleanup(func() { sysctlDir = old })
	return dir
}

func TestSysctlsFromFiles(t *testing.T) {
	fakeSysctls(t, map[string]string{"enabled": "1\n", "scheduler": "default\n", "available_schedulers": "default bpf_rr\n"})
	got, err := Sysctls()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"enabled": "1", "scheduler": "default", "available_schedulers": "default bpf_rr"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Sysctls (-want +got):\n%s", diff)
	}
	for _, name := range []string{"enabled", "net.mptcp.enabled"} {
		if v, err := ReadSysctl(name); err != nil || v != "1" {
			t.Errorf("ReadSysctl(%q) = %q, %v", name, v, err)
		}
	}
	if err := WriteSysctl("net.mptcp.enabled", "0"); err != nil {
		t.Fatal(err)
	}
	if v, _ := ReadSysctl("enabled"); v != "0" {
		t.Errorf("after write: %q, want 0", v)
	}
}

func TestSysctlMissingAndInvalid(t *testing.T) {
	fakeSysctls(t, map[string]string{"enabled": "1\n"})
	_, err := ReadSysctl("close_timeout")
	if !errors.Is(err, ErrSysctlUnsupported) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("read missing: %v", err)
	}
	if err == nil || err.Error() != "mptcp read sysctl net.mptcp.close_timeout: sysctl not supported by this kernel" {
		t.Errorf("read missing: message %q", err)
	}
	err = WriteSysctl("close_timeout", "60")
	if !errors.Is(err, ErrSysctlUnsupported) {
		t.Errorf("write missing: %v", err)
	}
	for _, bad := range []string{"", "net.mptcp.", "../ipv4/ip_forward", "a/b", "net.ipv4.ip_forward"} {
		if _, err := ReadSysctl(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ReadSysctl(%q) = %v, want ErrInvalid", bad, err)
		}
		if err := WriteSysctl(bad, "1"); !errors.Is(err, ErrInvalid) {
			t.Errorf("WriteSysctl(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	sysctlDir = filepath.Join(t.TempDir(), "absent")
	if _, err := Sysctls(); !errors.Is(err, ErrUnsupported) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Sysctls without the directory: %v", err)
	}
}
