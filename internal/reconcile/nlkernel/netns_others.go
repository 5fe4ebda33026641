//go:build !linux

package nlkernel

import "errors"

type netNS struct{}

func openNetNS(fd int) (netNS, error) {
	if fd != 0 {
		return netNS{}, errors.New("reconcile: network namespaces need Linux")
	}
	return netNS{}, nil
}

func (netNS) close() {}

func (netNS) do(fn func() error) error { return fn() }
