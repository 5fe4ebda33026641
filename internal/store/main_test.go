package store_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: every
// cache, watch, subscription and embedded etcd a test starts must end with
// it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
