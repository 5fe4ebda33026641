package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Cleanup removes every lab whose prefix starts with prefix, running or
// left over by a crash: it kills the processes inside the lab's
// namespaces, deletes the namespaces (and with them their links) and
// deletes links in the caller's namespace named "<lab prefix>-<host>…"
// (the lab makes none there, but a hand-made or older one might have). Only names of
// the lab's form "<prefix>-<host>" are touched, so Cleanup(BasePrefix)
// removes all labs and nothing else.
func Cleanup(prefix string) error {
	if prefix == "" {
		return errors.New("lab: cleanup: empty prefix")
	}
	return removeLabs(func(p string) bool { return strings.HasPrefix(p, prefix) })
}

// splitLabName splits a lab name "<prefix>-<rest>" and reports whether the
// prefix has the lab's form.
func splitLabName(name string) (prefix, rest string, ok bool) {
	prefix, rest, ok = strings.Cut(name, "-")
	return prefix, rest, ok && prefixRE.MatchString(prefix) && rest != ""
}

// labNamespaces lists the namespaces under /run/netns of the labs whose
// prefix match accepts.
func labNamespaces(match func(prefix string) bool) ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		p, host, ok := splitLabName(e.Name())
		if ok && isHost(host) && match(p) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

func removeLabs(match func(prefix string) bool) error {
	names, err := labNamespaces(match)
	if err != nil {
		return fmt.Errorf("lab: list namespaces: %w", err)
	}
	var errs []error
	inodes := make(map[uint64]string)
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join("/run/netns", n), &st); err == nil {
			inodes[st.Ino] = n
		}
	}
	if err := killIn(inodes); err != nil {
		errs = append(errs, err)
	}
	for _, n := range names {
		if err := netns.DeleteNamed(n); errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("lab: delete namespace %s: %w (its mount is hidden under a later bind mount of /run/netns, as a first `ip netns add` makes; "+
				"once no namespace is mounted in /run/netns, `umount /run/netns` uncovers it)", n, err))
		} else if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("lab: delete namespace %s: %w", n, err))
		}
	}
	if err := removeRootLinks(match); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killIn kills every process (but this one) whose network namespace has
// one of the inodes, and waits for them to leave it.
func killIn(inodes map[uint64]string) error {
	if len(inodes) == 0 {
		return nil
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := pidsIn(inodes)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: processes %v do not leave the lab's namespaces", pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pidsIn(inodes map[uint64]string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		// A zombie has left its namespaces; the stat fails for it.
		if unix.Stat(filepath.Join("/proc", e.Name(), "ns/net"), &st) != nil {
			continue
		}
		if _, ok := inodes[st.Ino]; ok {
			pids = append(pids, pid)
		}
	}
	return pids
}

// isHost reports whether s names a namespace of a lab: one of Hosts or an
// extra host h1 to h16.
func isHost(s string) bool { return slices.Contains(Hosts, Host(s)) || fleetIndex(Host(s)) != 0 }

func startsWithHost(s string) bool {
	for _, h := range append(slices.Clone(Hosts), FleetHosts(MaxFleetHosts)...) {
		if strings.HasPrefix(s, string(h)) {
			return true
		}
	}
	return false
}

// removeRootLinks deletes links of labs in the caller's (root) namespace.
func removeRootLinks(match func(prefix string) bool) error {
	root, err := netns.GetFromPath("/proc/self/ns/net")
	if err != nil {
		return fmt.Errorf("lab: open root namespace: %w", err)
	}
	defer root.Close()
	h, err := netlink.NewHandleAt(root)
	if err != nil {
		return fmt.Errorf("lab: netlink handle: %w", err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("lab: list links: %w", err)
	}
	var errs []error
	for _, link := range links {
		if p, rest, ok := splitLabName(link.Attrs().Name); ok && match(p) && startsWithHost(rest) {
			if err := h.LinkDel(link); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("lab: delete link %s: %w", link.Attrs().Name, err))
			}
		}
	}
	return errors.Join(errs...)
}
