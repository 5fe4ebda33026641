package wait_test

import (
	"context"
	"testing"
	"time"

	"github.com/mpfleet/mpfleet/internal/wait"
)

func TestSleepWaits(t *testing.T) {
	start := time.Now()
	if !wait.Sleep(context.Background(), 20*time.Millisecond) {
		t.Fatal("Sleep reported an ended context")
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Errorf("Sleep returned after %v, before its 20ms", d)
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if wait.Sleep(ctx, time.Hour) {
		t.Error("Sleep on an ended context reported the whole hour passed")
	}

	// A context that ends while sleeping ends the sleep.
	ctx, cancel = context.WithCancel(context.Background())
	done := make(chan bool)
	go func() { done <- wait.Sleep(ctx, time.Hour) }()
	cancel()
	if <-done {
		t.Error("Sleep reported the whole hour passed after its context ended")
	}
}
