package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"sigs.k8s.io/yaml"

	"github.com/mpfleet/mpfleet/internal/policy"
	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// manifest is one Group document of a file given to apply or plan.
type manifest struct {
	// Index is the document's position among the file's non-empty
	// documents, from 1.
	Index int
	// Line is the file line the document starts on, from 1.
	Line int
	// Source is the file the document is in, set when apply or plan read
	// several files.
	Source string
	// ID is the group id, e.g. "web".
	ID string
	// Group holds description, selector and policy; nothing else is set.
	Group *mpfleetv1.Group
}

// manifestKeys are the top-level keys of a Group document.
var manifestKeys = []string{"kind", "name", "description", "selector", "rolloutStrategy", "policy"}

// parseManifests parses the YAML documents of file (named source in
// messages). It checks every document and returns the first problem found,
// naming the document and the field, before anything is sent anywhere.
func parseManifests(source string, data []byte) ([]*manifest, error) {
	docs, err := splitDocuments(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("%s: no documents", source)
	}
	var (
		out  []*manifest
		errs []error
		seen = map[string]int{}
	)
	for i, d := range docs {
		m, err := parseManifest(d)
		if err == nil {
			if first, dup := seen[m.ID]; dup {
				err = fmt.Errorf("name: group %q already appears in document %d", m.ID, first)
			} else {
				seen[m.ID] = i + 1
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: document %d (line %d): %w", source, i+1, d.line, err))
			continue
		}
		m.Index = i + 1
		out = append(out, m)
	}
	if err := firstOf(errs, "problems"); err != nil {
		return nil, err
	}
	return out, nil
}

type document struct {
	text  []byte
	start int // file line of text's first line
	line  int // file line of text's first line that is not blank or a comment
}

// splitDocuments splits a YAML stream at "---" lines and drops documents
// holding only comments and blank lines.
func splitDocuments(data []byte) ([]document, error) {
	var (
		docs  []document
		cur   bytes.Buffer
		start = 1
		n     = 0
	)
	flush := func(next int) {
		if !blankYAML(cur.Bytes()) {
			docs = append(docs, document{text: bytes.Clone(cur.Bytes()), start: start, line: firstContentLine(cur.Bytes(), start)})
		}
		cur.Reset()
		start = next
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 16<<20)
	for sc.Scan() {
		n++
		line := sc.Text()
		if isDocMarker(line, "---") {
			flush(n + 1)
			// Content after the marker on the same line ("--- {…}") starts the
			// next document.
			if rest := strings.TrimSpace(strings.TrimPrefix(line, "---")); rest != "" && !strings.HasPrefix(rest, "#") {
				cur.WriteString(rest + "\n")
				start = n
			}
			continue
		}
		if isDocMarker(line, "...") {
			flush(n + 1)
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		// Never apply what is left of a file that could not be read whole.
		return nil, fmt.Errorf("line %d: %w (a line over 16 MiB?)", n+1, err)
	}
	flush(n + 1)
	return docs, nil
}

func isDocMarker(line, marker string) bool {
	if !strings.HasPrefix(line, marker) {
		return false
	}
	rest := line[len(marker):]
	return rest == "" || rest[0] == ' ' || rest[0] == '\t'
}

func blankYAML(b []byte) bool {
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

// firstContentLine returns the file line of b's first line that is neither
// blank nor a comment.
func firstContentLine(b []byte, start int) int {
	for i, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			return start + i
		}
	}
	return start
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

// parseManifest parses one document.
func parseManifest(d document) (*manifest, error) {
	if err := checkDuplicateKeys(d); err != nil {
		return nil, err
	}
	js, err := yaml.YAMLToJSONStrict(d.text)
	if err != nil {
		// Report file lines, not document lines.
		msg := strings.TrimPrefix(err.Error(), "error converting YAML to JSON: ")
		msg = yamlLineRE.ReplaceAllStringFunc(msg, func(s string) string {
			n, _ := strconv.Atoi(strings.TrimPrefix(s, "line "))
			return fmt.Sprintf("line %d", n+d.start-1)
		})
		return nil, fmt.Errorf("not valid YAML: %s", oneLine(msg))
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var top any
	if err := dec.Decode(&top); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	obj, ok := top.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("want a mapping with kind: Group, got %s", jsonType(top))
	}
	for _, k := range sortedKeys(obj) {
		if !slices.Contains(manifestKeys, k) {
			return nil, fmt.Errorf("%s: unknown field%s (a Group has %s)", k, suggest(k, manifestKeys), strings.Join(manifestKeys, ", "))
		}
	}
	switch kind := obj["kind"].(type) {
	case nil:
		return nil, fmt.Errorf("kind: missing, want Group")
	case string:
		if kind != "Group" {
			return nil, fmt.Errorf("kind: %q is not supported, want Group", kind)
		}
	default:
		return nil, fmt.Errorf("kind: want Group, got %s", jsonType(kind))
	}
	id, err := manifestName(obj["name"])
	if err != nil {
		return nil, err
	}
	body := map[string]any{}
	for _, k := range []string{"description", "selector", "rolloutStrategy", "policy"} {
		if v, ok := obj[k]; ok {
			body[k] = v
		}
	}
	groupDesc := (&mpfleetv1.Group{}).ProtoReflect().Descriptor()
	norm, err := normalizeMessage("", body, groupDesc)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(norm)
	if err != nil {
		return nil, err
	}
	g := &mpfleetv1.Group{}
	if err := protojson.Unmarshal(b, g); err != nil {
		// normalizeMessage checks what protojson checks, so this is not
		// expected; say what protojson says.
		return nil, err
	}
	return &manifest{Line: d.line, ID: id, Group: g}, nil
}

func manifestName(v any) (string, error) {
	s, ok := v.(string)
	switch {
	case v == nil:
		return "", fmt.Errorf("name: missing (the group id, e.g. name: web)")
	case !ok:
		return "", fmt.Errorf("name: want a string, got %s", jsonType(v))
	}
	id := strings.TrimPrefix(s, groupPrefix)
	// The server's rule and words (policy.ValidateGroupID): the CLI checks
	// nothing the server does not define.
	var vs policy.Violations
	if policy.ValidateGroupID(&vs, "name", id); len(vs) > 0 {
		return "", fmt.Errorf("%v", vs[0])
	}
	return id, nil
}

// normalizeMessage checks a JSON object against a message descriptor,
// naming the first bad field by its path, and returns it with short enum
// names replaced by full ones and nulls dropped, ready for protojson.
func normalizeMessage(path string, v any, md protoreflect.MessageDescriptor) (map[string]any, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: want a mapping, got %s", path, jsonType(v))
	}
	out := make(map[string]any, len(obj))
	for _, k := range sortedKeys(obj) {
		val := obj[k]
		p := joinPath(path, k)
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(k))
		}
		if fd == nil {
			return nil, fmt.Errorf("%s: unknown field%s", p, suggest(k, fieldNames(md)))
		}
		if val == nil {
			continue
		}
		var (
			n   any
			err error
		)
		switch {
		case fd.IsMap():
			n, err = normalizeMap(p, val, fd)
		case fd.IsList():
			n, err = normalizeList(p, val, fd)
		default:
			n, err = normalizeValue(p, val, fd)
		}
		if err != nil {
			return nil, err
		}
		out[k] = n
	}
	return out, nil
}

func normalizeMap(path string, v any, fd protoreflect.FieldDescriptor) (any, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: want a mapping, got %s", path, jsonType(v))
	}
	out := make(map[string]any, len(obj))
	for _, k := range sortedKeys(obj) {
		if obj[k] == nil {
			return nil, fmt.Errorf("%s: no value", joinPath(path, k))
		}
		n, err := normalizeValue(joinPath(path, k), obj[k], fd.MapValue())
		if err != nil {
			return nil, err
		}
		out[k] = n
	}
	return out, nil
}

func normalizeList(path string, v any, fd protoreflect.FieldDescriptor) (any, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%s: want a list, got %s", path, jsonType(v))
	}
	out := make([]any, len(list))
	for i, e := range list {
		p := fmt.Sprintf("%s[%d]", path, i)
		if e == nil {
			return nil, fmt.Errorf("%s: empty list item", p)
		}
		n, err := normalizeValue(p, e, fd)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

// normalizeValue checks one singular value (or one list or map element) of
// field fd.
func normalizeValue(path string, v any, fd protoreflect.FieldDescriptor) (any, error) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		if fd.Message().FullName() == durationName {
			return normalizeDuration(path, v)
		}
		return normalizeMessage(path, v, fd.Message())
	case protoreflect.EnumKind:
		switch e := v.(type) {
		case string:
			ev, ok := enumByName(fd.Enum(), e)
			if !ok {
				return nil, fmt.Errorf("%s: unknown value %q (one of %s)", path, e, strings.Join(enumShortNames(fd.Enum()), ", "))
			}
			return string(ev.Name()), nil
		case json.Number:
			n, err := e.Int64()
			if err != nil || fd.Enum().Values().ByNumber(protoreflect.EnumNumber(n)) == nil {
				return nil, fmt.Errorf("%s: unknown value %s (one of %s)", path, e, strings.Join(enumShortNames(fd.Enum()), ", "))
			}
			return e, nil
		}
		return nil, fmt.Errorf("%s: want one of %s, got %s", path, strings.Join(enumShortNames(fd.Enum()), ", "), jsonType(v))
	case protoreflect.BoolKind:
		if _, ok := v.(bool); !ok {
			return nil, fmt.Errorf("%s: want true or false, got %s", path, jsonType(v))
		}
		return v, nil
	case protoreflect.StringKind:
		if _, ok := v.(string); !ok {
			return nil, fmt.Errorf("%s: want a string, got %s (quote it)", path, jsonType(v))
		}
		return v, nil
	case protoreflect.BytesKind:
		if _, ok := v.(string); !ok {
			return nil, fmt.Errorf("%s: want a base64 string, got %s", path, jsonType(v))
		}
		return v, nil
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		if _, ok := v.(json.Number); !ok {
			return nil, fmt.Errorf("%s: want a number, got %s", path, jsonType(v))
		}
		return v, nil
	}
	// Integers.
	lo, hi := intRange(fd.Kind())
	num, ok := v.(json.Number)
	if !ok {
		return nil, fmt.Errorf("%s: want an integer from %d to %d, got %s", path, lo, hi, jsonType(v))
	}
	if lo == 0 {
		u, err := strconv.ParseUint(num.String(), 10, 64)
		if err != nil || u > uint64(hi) {
			return nil, fmt.Errorf("%s: want an integer from %d to %d, got %s", path, lo, hi, jsonType(num))
		}
		return num, nil
	}
	i, err := strconv.ParseInt(num.String(), 10, 64)
	if err != nil || i < lo || i > hi {
		return nil, fmt.Errorf("%s: want an integer from %d to %d, got %s", path, lo, hi, jsonType(num))
	}
	return num, nil
}

// durationName is google.protobuf.Duration, which JSON writes as a string.
const durationName = "google.protobuf.Duration"

// normalizeDuration checks a duration (a probe's interval, 5s, 100ms, 1m30s)
// and returns it in protojson's form, decimal seconds ("0.100s"), which is
// also what -o yaml and diff print.
func normalizeDuration(path string, v any) (any, error) {
	s, ok := v.(string)
	var (
		d   time.Duration
		err error
	)
	if ok {
		d, err = time.ParseDuration(strings.TrimSpace(s))
	}
	if !ok || err != nil {
		return nil, fmt.Errorf("%s: want a duration such as 5s, 100ms or 1m30s, got %s", path, jsonType(v))
	}
	b, err := protojson.Marshal(durationpb.New(d))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out string
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// intRange returns the range of an integer kind; hi is capped at MaxInt64
// for 64-bit unsigned kinds.
func intRange(k protoreflect.Kind) (lo, hi int64) {
	switch k {
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return 0, math.MaxUint32
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return 0, math.MaxInt64
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return math.MinInt64, math.MaxInt64
	default:
		return math.MinInt32, math.MaxInt32
	}
}

// enumPrefix returns the prefix every value of an enum shares, taken from
// its zero value: "ENDPOINT_FLAG_" for ENDPOINT_FLAG_UNSPECIFIED.
func enumPrefix(ed protoreflect.EnumDescriptor) string {
	zero := string(ed.Values().Get(0).Name())
	if p, ok := strings.CutSuffix(zero, "UNSPECIFIED"); ok {
		return p
	}
	return ""
}

// enumByName finds an enum value by its full name (ENDPOINT_FLAG_SUBFLOW)
// or its short name (subflow), in any case, with '-' for '_'.
func enumByName(ed protoreflect.EnumDescriptor, s string) (protoreflect.EnumValueDescriptor, bool) {
	up := strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(s), "-", "_"))
	if up == "" {
		return nil, false
	}
	if ev := ed.Values().ByName(protoreflect.Name(up)); ev != nil {
		return ev, true
	}
	if ev := ed.Values().ByName(protoreflect.Name(enumPrefix(ed) + up)); ev != nil {
		return ev, true
	}
	return nil, false
}

// enumShortName returns a value's name without the enum's prefix, in lower
// case: subflow for ENDPOINT_FLAG_SUBFLOW.
func enumShortName(ed protoreflect.EnumDescriptor, n protoreflect.EnumNumber) string {
	ev := ed.Values().ByNumber(n)
	if ev == nil {
		return strconv.Itoa(int(n))
	}
	return strings.ToLower(strings.TrimPrefix(string(ev.Name()), enumPrefix(ed)))
}

// enumShortNames lists an enum's short names, without the zero value.
func enumShortNames(ed protoreflect.EnumDescriptor) []string {
	var out []string
	for i := 1; i < ed.Values().Len(); i++ {
		out = append(out, enumShortName(ed, ed.Values().Get(i).Number()))
	}
	return out
}

func fieldNames(md protoreflect.MessageDescriptor) []string {
	var out []string
	for i := 0; i < md.Fields().Len(); i++ {
		out = append(out, md.Fields().Get(i).JSONName())
	}
	return out
}

// suggest returns ` (did you mean "x"?)` for the candidate closest to s, if
// one is close.
func suggest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), strings.ToLower(c)); d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// jsonType names the YAML type of a decoded value, for messages.
func jsonType(v any) string {
	switch v := v.(type) {
	case nil:
		return "nothing"
	case bool:
		return fmt.Sprintf("boolean %v", v)
	case json.Number:
		return "number " + v.String()
	case string:
		return fmt.Sprintf("string %q", v)
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", v)
}
