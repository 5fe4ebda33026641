//go:build !unix

package loadgen

// RaiseFileLimit does nothing here; it returns 0 (unknown).
func RaiseFileLimit() (uint64, error) { return 0, nil }
