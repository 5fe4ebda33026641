package controller_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: the hub,
// the cache, the replica's session and leader work, the status writers and
// every server and client a test starts must end with it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
