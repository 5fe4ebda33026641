//go:build !linux

package route

import (
	"errors"
	"net/netip"
)

var errUnsupported = errors.New("route: policy routing needs Linux")

// Manager manages owned policy-routing state; on this OS every call fails.
type Manager struct{ r Range }

// Open fails: policy routing needs Linux.
func Open(opts *Options) (*Manager, error) { return nil, errUnsupported }

// Close does nothing.
func (m *Manager) Close() error { return nil }

// Range returns the owned range.
func (m *Manager) Range() Range { return m.r }

// Rules fails on this OS.
func (m *Manager) Rules() ([]Rule, error) { return nil, errUnsupported }

// Routes fails on this OS.
func (m *Manager) Routes() ([]Route, error) { return nil, errUnsupported }

// AddRule fails on this OS.
func (m *Manager) AddRule(Rule) error { return errUnsupported }

// DeleteRule fails on this OS.
func (m *Manager) DeleteRule(Rule) error { return errUnsupported }

// AddRoute fails on this OS.
func (m *Manager) AddRoute(Route) error { return errUnsupported }

// DeleteRoute fails on this OS.
func (m *Manager) DeleteRoute(Route) error { return errUnsupported }

// Gateway fails on this OS.
func (m *Manager) Gateway(int, Family) (netip.Addr, error) { return netip.Addr{}, errUnsupported }

// LinkNames fails on this OS.
func (m *Manager) LinkNames() (map[int]string, error) { return nil, errUnsupported }

// Render fails on this OS.
func (m *Manager) Render() (string, error) { return "", errUnsupported }

// Dump is what the kernel holds inside a Range.
type Dump struct {
	Rules         []Rule
	Routes        []Route
	ForeignRules  []ForeignRule
	ForeignRoutes []ForeignRoute
}

// Dump fails on this OS.
func (m *Manager) Dump() (Dump, error) { return Dump{}, errUnsupported }

// SetRuleProtocol fails on this OS.
func (m *Manager) SetRuleProtocol(Rule, Proto, Proto) error { return errUnsupported }

// SetRouteProtocol fails on this OS.
func (m *Manager) SetRouteProtocol(Route, Proto, Proto) error { return errUnsupported }
