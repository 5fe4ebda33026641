package config

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// maxExact is 2^53: every integer up to it in magnitude is exactly one
// float64, so a YAML float such as 1e6 that is integral and within it names
// exactly one integer.
const maxExact = 1 << 53

// setting is one flag value to set: text is what fs.Set takes (the command
// line's form); for a list flag, items are its exact items, which replace
// what fs.Set parsed from text (a string item may hold a comma).
type setting struct {
	flag   *pflag.Flag
	source string // for errors: "config NAME" or the environment variable
	file   bool   // from the config file
	text   string
	items  []string // a list's items (non-nil for a list, also an empty one)
}

func (s setting) apply(fs *pflag.FlagSet) error {
	if err := fs.Set(s.flag.Name, s.text); err != nil {
		// A file's key is no command-line argument: say what the flag's
		// own parser said, without pflag's `invalid argument for "--x"`.
		var invalid *pflag.InvalidValueError
		if s.file && errors.As(err, &invalid) && invalid.Unwrap() != nil {
			err = invalid.Unwrap()
		}
		return fmt.Errorf("%s: %w", s.source, err)
	}
	if s.items != nil {
		if err := s.flag.Value.(pflag.SliceValue).Replace(s.items); err != nil {
			return fmt.Errorf("%s: %w", s.source, err)
		}
	}
	return nil
}

// fileSetting converts v, a value the YAML parser decoded for flag f, into
// what fs.Set takes, checking it against the flag's type. A number keeps its
// digits (strconv, never %v of a float64). ok is false for a value that sets
// nothing: YAML null, or {} for a map flag that is empty already.
func fileSetting(f *pflag.Flag, v any) (s setting, ok bool, err error) {
	s = setting{flag: f, source: "config " + f.Name, file: true}
	if v == nil {
		return s, false, nil
	}
	typ := f.Value.Type()
	if _, isList := f.Value.(pflag.SliceValue); isList {
		items, isSeq := v.([]any)
		if !isSeq {
			if str, isStr := v.(string); isStr {
				// A string is what the command line takes: "a,b".
				s.text = str
				return s, true, nil
			}
			items = []any{v}
		}
		kind := elemKind(typ)
		s.items = make([]string, len(items))
		for i, it := range items {
			if s.items[i], err = scalar(kind, it); err != nil {
				return s, false, fmt.Errorf("%s[%d]: %w", s.source, i, err)
			}
		}
		s.text = csvJoin(s.items)
		return s, true, nil
	}
	if m, isMap := v.(map[string]any); isMap && (isMapKind(typ) || isText(typ)) {
		s.text, err = mapText(typ, m)
		if err != nil {
			return s, false, fmt.Errorf("%s%w", s.source, err)
		}
		if s.text == "" && isMapKind(typ) {
			// pflag cannot empty a map flag: {} is fine where it is empty.
			if f.Value.String() != "[]" {
				return s, false, fmt.Errorf("%s: {} cannot empty this flag (its default is %s)", s.source, f.Value.String())
			}
			return s, false, nil
		}
		return s, true, nil
	}
	if isMapKind(typ) {
		if str, isStr := v.(string); isStr {
			s.text = str // k=v,k2=v2 as on the command line
			return s, true, nil
		}
		return s, false, fmt.Errorf("%s: %s is not a map (key: value, or k=v,k2=v2)", s.source, describe(v))
	}
	if items, isSeq := v.([]any); isSeq && isText(typ) {
		parts := make([]string, len(items))
		for i, it := range items {
			if parts[i], err = text(it); err != nil {
				return s, false, fmt.Errorf("%s[%d]: %w", s.source, i, err)
			}
		}
		s.text = strings.Join(parts, ",")
		return s, true, nil
	}
	if s.text, err = scalar(typ, v); err != nil {
		return s, false, fmt.Errorf("%s: %w", s.source, err)
	}
	return s, true, nil
}

// elemKind is the type of a list flag's items: "int" for intSlice, "string"
// for stringArray.
func elemKind(typ string) string {
	return strings.TrimSuffix(strings.TrimSuffix(typ, "Slice"), "Array")
}

func isMapKind(typ string) bool {
	return typ == "stringToString" || typ == "stringToInt" || typ == "stringToInt64"
}

// isText reports whether a flag of this type takes free text (a string, or
// a type of the program's own, which parses the text itself).
func isText(typ string) bool {
	switch typ {
	case "bool", "duration", "float32", "float64", "count",
		"int", "int8", "int16", "int32", "int64",
		"uint", "uint8", "uint16", "uint32", "uint64":
		return false
	}
	return true
}

// mapText renders a YAML map as k=v pairs, sorted by key, in the form fs.Set
// takes for typ: CSV for stringToString (a value may hold a comma). An
// error begins with where under the flag it lies (".KEY: " or ": ").
func mapText(typ string, m map[string]any) (string, error) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	valKind := "string"
	switch typ {
	case "stringToInt":
		valKind = "int"
	case "stringToInt64":
		valKind = "int64"
	}
	pairs := make([]string, len(keys))
	for i, k := range keys {
		if strings.Contains(k, "=") || (valKind != "string" && strings.Contains(k, ",")) {
			return "", fmt.Errorf(": key %q: a key cannot hold '=' or ','", k)
		}
		v, err := scalar(valKind, m[k])
		if err != nil {
			return "", fmt.Errorf(".%s: %w", k, err)
		}
		pairs[i] = k + "=" + v
	}
	switch {
	case typ != "stringToString":
		return strings.Join(pairs, ","), nil
	case len(pairs) == 1 && strings.Count(pairs[0], "=") == 1:
		// pflag takes a lone pair as it is, without CSV.
		return pairs[0], nil
	}
	return csvJoin(pairs), nil
}

// csvJoin writes items as one CSV record, as pflag's string lists parse
// them: quoted only where an item needs it.
func csvJoin(items []string) string {
	if len(items) == 0 {
		return ""
	}
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	_ = w.Write(items) // a bytes.Buffer does not fail
	w.Flush()
	return strings.TrimSuffix(b.String(), "\n")
}

// scalar converts one YAML scalar for a flag (or list item) of type kind.
func scalar(kind string, v any) (string, error) {
	switch kind {
	case "int", "count":
		return integer(v, kind, true, strconv.IntSize)
	case "int8", "int16", "int32", "int64":
		bits, _ := strconv.Atoi(kind[3:])
		return integer(v, kind, true, bits)
	case "uint":
		return integer(v, kind, false, strconv.IntSize)
	case "uint8", "uint16", "uint32", "uint64":
		bits, _ := strconv.Atoi(kind[4:])
		return integer(v, kind, false, bits)
	case "float32", "float64":
		bits, _ := strconv.Atoi(kind[5:])
		return float(v, kind, bits)
	case "bool":
		return boolean(v)
	case "duration":
		return duration(v)
	}
	return text(v)
}

// integer accepts a YAML integer, a string the flag would parse (0x10,
// 1_000), or a float that is integral and within ±2^53 (1e6); it returns
// the decimal digits.
func integer(v any, kind string, signed bool, bits int) (string, error) {
	want := "an integer"
	if !signed {
		want = "a non-negative integer"
	}
	s, ok := digits(v)
	if x, isFloat := v.(float64); isFloat {
		if x != math.Trunc(x) || math.IsInf(x, 0) {
			return "", fmt.Errorf("%s is not %s", describe(v), want)
		}
		if math.Abs(x) > maxExact {
			return "", fmt.Errorf("%s is not an exact integer: write an integer beyond 2^53 out in digits, not as a floating-point number", describe(v))
		}
		s, ok = strconv.FormatFloat(x, 'f', -1, 64), true
	}
	if !ok {
		return "", fmt.Errorf("%s is not %s", describe(v), want)
	}
	var err error
	if signed {
		var n int64
		if n, err = strconv.ParseInt(s, 0, bits); err == nil {
			return strconv.FormatInt(n, 10), nil
		}
	} else {
		var n uint64
		if n, err = strconv.ParseUint(s, 0, bits); err == nil {
			return strconv.FormatUint(n, 10), nil
		}
	}
	if errors.Is(err, strconv.ErrRange) {
		return "", fmt.Errorf("%s is out of range for %s", describe(v), kind)
	}
	return "", fmt.Errorf("%s is not %s", describe(v), want)
}

// float accepts a YAML number or a numeric string, keeping its digits (the
// shortest text that parses back to the same float64).
func float(v any, kind string, bits int) (string, error) {
	s, ok := digits(v)
	if x, isFloat := v.(float64); isFloat {
		s, ok = strconv.FormatFloat(x, 'g', -1, 64), true
	}
	if !ok {
		return "", fmt.Errorf("%s is not a number", describe(v))
	}
	if _, err := strconv.ParseFloat(s, bits); err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return "", fmt.Errorf("%s is out of range for %s", describe(v), kind)
		}
		return "", fmt.Errorf("%s is not a number", describe(v))
	}
	return s, nil
}

// boolean accepts true and false, the strings strconv.ParseBool takes, and
// YAML 1.1's yes, no, on and off (which YAML 1.2 reads as strings).
func boolean(v any) (string, error) {
	switch x := v.(type) {
	case bool:
		return strconv.FormatBool(x), nil
	case string:
		if b, err := strconv.ParseBool(x); err == nil {
			return strconv.FormatBool(b), nil
		}
		switch strings.ToLower(x) {
		case "yes", "on":
			return "true", nil
		case "no", "off":
			return "false", nil
		}
	}
	return "", fmt.Errorf("%s is not a boolean (true or false)", describe(v))
}

// duration accepts a Go duration string ("30s", "1m30s") or 0.
func duration(v any) (string, error) {
	switch x := v.(type) {
	case string:
		if _, err := time.ParseDuration(x); err == nil {
			return x, nil
		}
	case int:
		if x == 0 {
			return "0s", nil
		}
		return "", fmt.Errorf("%s is not a duration: give it a unit, like 30s, 5m or 1h30m", describe(v))
	}
	return "", fmt.Errorf("%s is not a duration (like 30s, 5m or 1h30m)", describe(v))
}

// text renders a scalar for a flag that takes free text. Integers keep their
// digits; an integral float within ±2^53 is written as an integer (1e6 is
// 1000000), any other float in its shortest exact form.
func text(v any) (string, error) {
	if s, ok := digits(v); ok {
		return s, nil
	}
	switch x := v.(type) {
	case bool:
		return strconv.FormatBool(x), nil
	case float64:
		if x == math.Trunc(x) && math.Abs(x) <= maxExact {
			return strconv.FormatFloat(x, 'f', -1, 64), nil
		}
		return strconv.FormatFloat(x, 'g', -1, 64), nil
	}
	return "", fmt.Errorf("%s is not a string", describe(v))
}

// describe shows a YAML value in an error: strings quoted, numbers in their
// digits, lists and maps by kind.
func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return strconv.Quote(x)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case []any:
		return "a list"
	case map[string]any:
		return "a map"
	}
	return fmt.Sprint(v)
}

// digits returns the decimal text of a YAML integer, or a string as it is;
// ok is false for any other value.
func digits(v any) (s string, ok bool) {
	switch x := v.(type) {
	case int:
		return strconv.Itoa(x), true
	case int64:
		return strconv.FormatInt(x, 10), true
	case uint64:
		return strconv.FormatUint(x, 10), true
	case string:
		return x, true
	}
	return "", false
}
