//go:build !linux

package routenl

import (
	"errors"

	"github.com/mpfleet/mpfleet/internal/route"
)

var errUnsupported = errors.New("route: policy routing needs Linux")

// Manager manages owned policy-routing state; on this OS every call fails.
type Manager struct{}

// Open fails: policy routing needs Linux.
func Open(opts *Options) (*Manager, error) { return nil, errUnsupported }

// Close does nothing.
func (m *Manager) Close() error { return nil }

// Rules fails on this OS.
func (m *Manager) Rules() ([]route.Rule, error) { return nil, errUnsupported }

// Routes fails on this OS.
func (m *Manager) Routes() ([]route.Route, error) { return nil, errUnsupported }

// AddRule fails on this OS.
func (m *Manager) AddRule(route.Rule) error { return errUnsupported }

// DeleteRule fails on this OS.
func (m *Manager) DeleteRule(route.Rule) error { return errUnsupported }

// AddRoute fails on this OS.
func (m *Manager) AddRoute(route.Route) error { return errUnsupported }

// DeleteRoute fails on this OS.
func (m *Manager) DeleteRoute(route.Route) error { return errUnsupported }

// LinkNames fails on this OS.
func (m *Manager) LinkNames() (map[int]string, error) { return nil, errUnsupported }

// Dump fails on this OS.
func (m *Manager) Dump() (Dump, error) { return Dump{}, errUnsupported }

// SetRuleProtocol fails on this OS.
func (m *Manager) SetRuleProtocol(route.Rule, route.Proto, route.Proto) error { return errUnsupported }

// SetRouteProtocol fails on this OS.
func (m *Manager) SetRouteProtocol(route.Route, route.Proto, route.Proto) error {
	return errUnsupported
}
