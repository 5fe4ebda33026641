package etcdtest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// fatalTB records a test's first fatal failure instead of failing it.
type fatalTB struct {
	testing.TB
	msg chan string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatal(args ...any) {
	f.msg <- fmt.Sprint(args...)
	runtime.Goexit()
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg <- fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// TestStartProcNoticesExit: a process that exits instead of serving fails
// the start at once, with its exit, rather than after the 60 s wait.
func TestStartProcNoticesExit(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "etcd")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho 'etcdtest: a member that cannot start' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	f := &fatalTB{TB: t, msg: make(chan string, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		StartProc(f, bin, ProcOptions{})
	}()
	select {
	case m := <-f.msg:
		if !strings.Contains(m, "exited before it served") || !strings.Contains(m, "exit status 3") {
			t.Errorf("start failed with %q, want the process's exit named", m)
		}
	case <-done:
		t.Fatal("StartProc returned for a process that never served")
	case <-time.After(30 * time.Second):
		t.Fatal("StartProc did not notice within 30s that the process exited")
	}
	<-done
}
