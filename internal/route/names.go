package route

import (
	"fmt"
	"strconv"
)

// names maps the values of a one-byte kernel enum (a protocol, a route type,
// a scope) to the names `ip` prints for them.
type names[T ~uint8] map[T]string

// format returns v's name, or its number.
func (m names[T]) format(v T) string {
	if n, ok := m[v]; ok {
		return n
	}
	return strconv.Itoa(int(v))
}

// parse sets *v to the value named s, or numbered s (0–255); what names the
// enum in the error, which wraps ErrInvalid.
func (m names[T]) parse(what string, s []byte, v *T) error {
	for x, n := range m {
		if n == string(s) {
			*v = x
			return nil
		}
	}
	n, err := strconv.ParseUint(string(s), 10, 8)
	if err != nil {
		return fmt.Errorf("%s %q: %w", what, s, ErrInvalid)
	}
	*v = T(n)
	return nil
}
