package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// rtMsg is one rtnetlink message: header fields, a fixed body, attributes.
func rtMsg(typ uint16, seq uint32, body []byte, attrs ...[]byte) []byte {
	ne := binary.NativeEndian
	b := ne.AppendUint32(nil, 0)
	b = ne.AppendUint16(b, typ)
	b = ne.AppendUint16(b, 0)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0)
	b = append(b, body...)
	for _, a := range attrs {
		b = append(b, a...)
	}
	ne.PutUint32(b, uint32(len(b)))
	return b
}

// rtAttr is one routing attribute, padded.
func rtAttr(typ uint16, v []byte) []byte {
	ne := binary.NativeEndian
	b := ne.AppendUint16(nil, uint16(4+len(v)))
	b = ne.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// ifaddr is the body of an address message: family, prefix length, flags,
// link.
func ifaddr(family, bits, flags uint8, link uint32) []byte {
	return binary.NativeEndian.AppendUint32([]byte{family, bits, flags, 0}, link)
}

// ifinfo is the body of a link message: link and flags.
func ifinfo(link int32, flags uint32) []byte {
	ne := binary.NativeEndian
	b := ne.AppendUint32(make([]byte, 4), uint32(link))
	b = ne.AppendUint32(b, flags)
	return ne.AppendUint32(b, 0)
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func TestWatchParse(t *testing.T) {
	v4 := netip.MustParseAddr("198.18.1.2").AsSlice()
	peer := netip.MustParseAddr("198.18.1.1").AsSlice()
	v6 := netip.MustParseAddr("2001:db8::2").AsSlice()
	pfx := netip.MustParsePrefix
	for _, tc := range []struct {
		name string
		msg  []byte
		want []Change
	}{
		{"IPv4 address added",
			rtMsg(unix.RTM_NEWADDR, 0, ifaddr(unix.AF_INET, 24, 0, 3), rtAttr(unix.IFA_ADDRESS, v4), rtAttr(unix.IFA_LOCAL, v4)),
			[]Change{{Link: 3, Addr: true, Added: pfx("198.18.1.2/24")}}},
		{"point-to-point: the local address, not the peer's",
			rtMsg(unix.RTM_NEWADDR, 0, ifaddr(unix.AF_INET, 32, 0, 3), rtAttr(unix.IFA_ADDRESS, peer), rtAttr(unix.IFA_LOCAL, v4)),
			[]Change{{Link: 3, Addr: true, Added: pfx("198.18.1.2/32")}}},
		{"IPv6 address added",
			rtMsg(unix.RTM_NEWADDR, 0, ifaddr(unix.AF_INET6, 64, 0, 4), rtAttr(unix.IFA_ADDRESS, v6)),
			[]Change{{Link: 4, Addr: true, Added: pfx("2001:db8::2/64")}}},
		{"tentative",
			rtMsg(unix.RTM_NEWADDR, 0, ifaddr(unix.AF_INET6, 64, unix.IFA_F_TENTATIVE, 4), rtAttr(unix.IFA_ADDRESS, v6)),
			[]Change{{Link: 4, Addr: true}}},
		{"DAD failed, in IFA_FLAGS",
			rtMsg(unix.RTM_NEWADDR, 0, ifaddr(unix.AF_INET6, 64, 0, 4), rtAttr(unix.IFA_ADDRESS, v6), rtAttr(unix.IFA_FLAGS, u32(unix.IFA_F_DADFAILED))),
			[]Change{{Link: 4, Addr: true}}},
		{"IFA_FLAGS without the tentative flag overrides the header's",
			rtMsg(unix.RTM_NEWADDR, 0, ifaddr(unix.AF_INET6, 64, unix.IFA_F_TENTATIVE, 4), rtAttr(unix.IFA_ADDRESS, v6), rtAttr(unix.IFA_FLAGS, u32(unix.IFA_F_NODAD))),
			[]Change{{Link: 4, Addr: true, Added: pfx("2001:db8::2/64")}}},
		{"removed",
			rtMsg(unix.RTM_DELADDR, 0, ifaddr(unix.AF_INET, 24, 0, 3), rtAttr(unix.IFA_LOCAL, v4)),
			[]Change{{Link: 3, Addr: true}}},
		{"prefix length past the address",
			rtMsg(unix.RTM_NEWADDR, 0, ifaddr(unix.AF_INET, 33, 0, 3), rtAttr(unix.IFA_LOCAL, v4)),
			[]Change{{Link: 3, Addr: true}}},
		{"link up, operstate up",
			rtMsg(unix.RTM_NEWLINK, 0, ifinfo(5, unix.IFF_UP), rtAttr(unix.IFLA_OPERSTATE, []byte{ifOperUp})),
			[]Change{{Link: 5}}},
		{"link up, no operstate (unknown)",
			rtMsg(unix.RTM_NEWLINK, 0, ifinfo(5, unix.IFF_UP)),
			[]Change{{Link: 5}}},
		{"link up administratively, operationally down",
			rtMsg(unix.RTM_NEWLINK, 0, ifinfo(5, unix.IFF_UP), rtAttr(unix.IFLA_OPERSTATE, []byte{2})),
			[]Change{{Link: 5, Down: true}}},
		{"link down",
			rtMsg(unix.RTM_NEWLINK, 0, ifinfo(5, 0), rtAttr(unix.IFLA_OPERSTATE, []byte{ifOperUp})),
			[]Change{{Link: 5, Down: true}}},
		{"link removed",
			rtMsg(unix.RTM_DELLINK, 0, ifinfo(5, unix.IFF_UP), rtAttr(unix.IFLA_OPERSTATE, []byte{ifOperUp})),
			[]Change{{Link: 5, Down: true}}},
		{"several in one datagram, others skipped",
			append(append(rtMsg(unix.RTM_NEWROUTE, 0, make([]byte, 12)), rtMsg(unix.RTM_NEWLINK, 0, ifinfo(5, 0))...),
				rtMsg(unix.RTM_DELADDR, 0, ifaddr(unix.AF_INET, 24, 0, 3))...),
			[]Change{{Link: 5, Down: true}, {Link: 3, Addr: true}}},
		{"short bodies skipped",
			append(rtMsg(unix.RTM_NEWLINK, 0, make([]byte, 8)), rtMsg(unix.RTM_NEWADDR, 0, make([]byte, 4))...),
			nil},
	} {
		var got []Change
		w := &rtWatch{seq: 7}
		done, err := w.handle(tc.msg, func(c Change) { got = append(got, c) })
		if err != nil || done {
			t.Errorf("%s: done %v, %v", tc.name, done, err)
		}
		if diff := cmp.Diff(tc.want, got, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
}

// TestWatchHandleDump: the end of the watch's own dump is seen; another's
// is not; a dump that fails is an error; a malformed datagram is one.
func TestWatchHandleDump(t *testing.T) {
	w := &rtWatch{seq: 7}
	nop := func(Change) {}
	if done, err := w.handle(rtMsg(unix.NLMSG_DONE, 7, u32(0)), nop); !done || err != nil {
		t.Errorf("the end of its dump: %v, %v", done, err)
	}
	if done, err := w.handle(rtMsg(unix.NLMSG_DONE, 6, u32(0)), nop); done || err != nil {
		t.Errorf("another's end: %v, %v", done, err)
	}
	ebusy := -int32(unix.EBUSY)
	if _, err := w.handle(rtMsg(unix.NLMSG_ERROR, 7, u32(uint32(ebusy))), nop); !errors.Is(err, unix.EBUSY) {
		t.Errorf("a failed dump: %v", err)
	}
	bad := rtMsg(unix.RTM_NEWLINK, 0, ifinfo(5, 0))
	binary.NativeEndian.PutUint32(bad, 200)
	if _, err := w.handle(bad, nop); err == nil {
		t.Error("a message longer than its datagram: no error")
	}
}

// TestWatchHandleAllocs: an added address is parsed and handed on without
// an allocation.
func TestWatchHandleAllocs(t *testing.T) {
	v4 := netip.MustParseAddr("198.18.1.2").AsSlice()
	msg := rtMsg(unix.RTM_NEWADDR, 0, ifaddr(unix.AF_INET, 24, 0, 3), rtAttr(unix.IFA_ADDRESS, v4), rtAttr(unix.IFA_LOCAL, v4), rtAttr(unix.IFA_FLAGS, u32(0)))
	w := &rtWatch{}
	var got Change
	notify := func(c Change) { got = c }
	if n := testing.AllocsPerRun(100, func() { _, _ = w.handle(msg, notify) }); n != 0 {
		t.Errorf("%v allocations per message", n)
	}
	if got.Added != netip.MustParsePrefix("198.18.1.2/24") {
		t.Errorf("got %+v", got)
	}
}

func FuzzWatchHandle(f *testing.F) {
	v4 := netip.MustParseAddr("198.18.1.2").AsSlice()
	f.Add(rtMsg(unix.RTM_NEWADDR, 0, ifaddr(unix.AF_INET, 24, 0, 3), rtAttr(unix.IFA_LOCAL, v4)))
	f.Add(rtMsg(unix.RTM_NEWLINK, 0, ifinfo(5, unix.IFF_UP), rtAttr(unix.IFLA_OPERSTATE, []byte{ifOperUp})))
	f.Add(rtMsg(unix.NLMSG_ERROR, 7, u32(1<<31)))
	f.Fuzz(func(t *testing.T, b []byte) {
		w := &rtWatch{seq: 7}
		_, _ = w.handle(b, func(c Change) {
			if c.Added.IsValid() && !c.Addr {
				t.Fatalf("an added address on a link change: %+v", c)
			}
		})
	})
}

// TestIntegrationWatch: NetlinkSystem.Watch, in a namespace of its own,
// first tells of the links and addresses there are, then of each change as
// the kernel announces it; it returns when its context ends.
func TestIntegrationWatch(t *testing.T) {
	l := newLab(t, 1)
	sys, err := OpenNetlinkSystem(int(l.ns.Handle))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sys.Close() }()
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan Change, 1024)
	done := make(chan error, 1)
	go func() {
		done <- sys.Watch(ctx, func(c Change) { changes <- c })
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v after its context ended, want context.Canceled", err)
			}
		case <-time.After(waitFor):
			t.Error("Watch did not return after its context ended")
		}
	}()
	link := l.links[0].index
	waitChange := func(what string, ok func(Change) bool) {
		t.Helper()
		deadline := time.After(waitFor)
		for {
			select {
			case c := <-changes:
				if ok(c) {
					return
				}
			case <-deadline:
				t.Fatalf("no change: %s", what)
			}
		}
	}
	waitChange("veth0 up, from the dump", func(c Change) bool { return c == Change{Link: link} })
	waitChange("its IPv4 address, from the dump", func(c Change) bool { return c == Change{Link: link, Addr: true, Added: l.links[0].v4} })

	added := netip.MustParsePrefix("198.18.10.77/24")
	l.addAddr(t, link, added)
	waitChange("the address added", func(c Change) bool { return c == Change{Link: link, Addr: true, Added: added} })
	tentative := netip.MustParsePrefix("2001:db8:10::77/64")
	if err := l.h.AddrAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: link}}, &netlink.Addr{IPNet: nlAddr(tentative).IPNet}); err != nil {
		t.Fatal(err)
	}
	waitChange("a tentative address, not added yet", func(c Change) bool { return c == Change{Link: link, Addr: true} })
	if err := l.h.AddrDel(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: link}}, nlAddr(added)); err != nil {
		t.Fatal(err)
	}
	waitChange("the address removed", func(c Change) bool { return c == Change{Link: link, Addr: true} })
	if err := l.h.LinkSetDown(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: link}}); err != nil {
		t.Fatal(err)
	}
	waitChange("veth0 down", func(c Change) bool { return c == Change{Link: link, Down: true} })
}
