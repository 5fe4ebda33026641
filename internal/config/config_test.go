package config

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"
)

func TestApplyPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("listen: 0.0.0.0:1\ndata-dir: /file\nlabels: {role: web, dc: fra}\nendpoints: [a, b]\ninterval: 3s\n"), 0o600)
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:7400", "")
	dataDir := fs.String("data-dir", "/default", "")
	labels := fs.String("labels", "", "")
	eps := fs.StringSlice("endpoints", nil, "")
	iv := fs.Duration("interval", time.Second, "")
	fs.String("config", "", "")
	if err := fs.Parse([]string{"--config", cfg, "--listen", "127.0.0.1:9"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("T_DATA_DIR", "/env")
	if err := Apply(fs, "T_", "config"); err != nil {
		t.Fatal(err)
	}
	if *listen != "127.0.0.1:9" || *dataDir != "/env" || *labels != "dc=fra,role=web" ||
		strings.Join(*eps, "|") != "a|b" || *iv != 3*time.Second {
		t.Fatalf("got listen=%s data-dir=%s labels=%s endpoints=%v interval=%s", *listen, *dataDir, *labels, *eps, *iv)
	}
}

func TestApplyUnknownKey(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(cfg, []byte("lisen: x\n"), 0o600)
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("listen", "", "")
	fs.String("config", "", "")
	fs.Parse([]string{"--config", cfg})
	if err := Apply(fs, "T_", "config"); err == nil || !strings.Contains(err.Error(), "lisen") {
		t.Fatalf("err = %v, want one naming lisen", err)
	}
}

// writeConfig writes a YAML config file for one test and returns its path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// applyFile parses --config path into fs and applies it with the prefix T_.
func applyFile(t *testing.T, fs *pflag.FlagSet, path string) error {
	t.Helper()
	fs.String("config", "", "")
	if err := fs.Parse([]string{"--config", path}); err != nil {
		t.Fatal(err)
	}
	return Apply(fs, "T_", "config")
}

// rawValue is a flag of the program's own type that keeps the text it is given,
// as the controller's byte sizes parse theirs.
type rawValue struct{ s string }

func (v *rawValue) Set(s string) error { v.s = s; return nil }
func (v *rawValue) String() string     { return v.s }
func (v *rawValue) Type() string       { return "bytes" }

// sizeValue is a flag of the program's own type that takes only digits.
type sizeValue uint64

func (v *sizeValue) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("%q is not a size", s)
	}
	*v = sizeValue(n)
	return nil
}
func (v *sizeValue) String() string { return strconv.FormatUint(uint64(*v), 10) }
func (v *sizeValue) Type() string   { return "bytes" }

// The koanf YAML parser keeps integers as integers (the issue: 1000000 came
// back as the float 1e+06 through JSON); 1e6 is a float in YAML 1.2.
func TestParserKeepsIntegers(t *testing.T) {
	k := koanf.New(".")
	if err := k.Load(rawbytes.Provider([]byte("a: 1000000\nb: 9007199254740993\nc: 18446744073709551615\nd: 1e6\n")), yaml.Parser()); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for key, v := range k.Raw() {
		got[key] = fmt.Sprintf("%T %v", v, v)
	}
	want := map[string]string{
		"a": "int 1000000",
		"b": "int 9007199254740993",
		"c": "uint64 18446744073709551615",
		"d": "float64 1e+06",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("decoded (-want +got):\n%s", diff)
	}
}

// Numbers reach their flags exactly, whatever the flag's type.
func TestApplyNumbers(t *testing.T) {
	path := writeConfig(t, `
int: 1000000
int-float: 1e6
int64-big: 9007199254740993
int64-neg: -9223372036854775808
int64-hex: 0x10
uint64-max: 18446744073709551615
uint64-str: "8589934592"
float: 0.1
float-int: 8589934592
float-exp: 1e-7
bytes-int: 8589934592
bytes-float: 8.589934592e9
bytes-unit: 8GiB
string-int: 1000000
string-float: 1e6
string-frac: 2.5
`)
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	i := fs.Int("int", 0, "")
	iF := fs.Int("int-float", 0, "")
	big := fs.Int64("int64-big", 0, "")
	neg := fs.Int64("int64-neg", 0, "")
	hex := fs.Int64("int64-hex", 0, "")
	umax := fs.Uint64("uint64-max", 0, "")
	ustr := fs.Uint64("uint64-str", 0, "")
	f := fs.Float64("float", 0, "")
	fInt := fs.Float64("float-int", 0, "")
	fExp := fs.Float64("float-exp", 0, "")
	var bInt, bFloat, bUnit rawValue
	fs.Var(&bInt, "bytes-int", "")
	fs.Var(&bFloat, "bytes-float", "")
	fs.Var(&bUnit, "bytes-unit", "")
	sInt := fs.String("string-int", "", "")
	sFloat := fs.String("string-float", "", "")
	sFrac := fs.String("string-frac", "", "")
	if err := applyFile(t, fs, path); err != nil {
		t.Fatal(err)
	}
	got := []any{*i, *iF, *big, *neg, *hex, *umax, *ustr, *f, *fInt, *fExp, bInt.s, bFloat.s, bUnit.s, *sInt, *sFloat, *sFrac}
	want := []any{1000000, 1000000, int64(1<<53 + 1), int64(math.MinInt64), int64(16), uint64(math.MaxUint64), uint64(8 << 30),
		0.1, float64(8 << 30), 1e-7, "8589934592", "8589934592", "8GiB", "1000000", "1000000", "2.5"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("flags (-want +got):\n%s", diff)
	}
}

// Durations, booleans, lists and maps in their YAML forms.
func TestApplyTypes(t *testing.T) {
	path := writeConfig(t, `
interval: 1m30s
zero: 0
on: true
yes: yes
off: "false"
endpoints: [https://a:2379, "b,with comma", 3]
endpoints-csv: a,b
array: [x, "y,z"]
ints: [1, 0x2, 3e0]
durations: [1s, 2m]
labels: {role: web, note: "a,b", eq: "x=y"}
one-label: {role: web}
no-labels: {}
quotas: {a: 8589934592}
joined: [a, 1, 2.5]
pairs: {b: 2, a: 1}
unset:
`)
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	iv := fs.Duration("interval", time.Second, "")
	zero := fs.Duration("zero", time.Second, "")
	on := fs.Bool("on", false, "")
	yes := fs.Bool("yes", false, "")
	off := fs.Bool("off", true, "")
	eps := fs.StringSlice("endpoints", nil, "")
	epsCSV := fs.StringSlice("endpoints-csv", nil, "")
	arr := fs.StringArray("array", nil, "")
	ints := fs.IntSlice("ints", nil, "")
	durs := fs.DurationSlice("durations", nil, "")
	labels := fs.StringToString("labels", nil, "")
	one := fs.StringToString("one-label", nil, "")
	none := fs.StringToString("no-labels", nil, "")
	quotas := fs.StringToInt64("quotas", nil, "")
	joined := fs.String("joined", "", "")
	pairs := fs.String("pairs", "", "")
	unset := fs.String("unset", "default", "")
	if err := applyFile(t, fs, path); err != nil {
		t.Fatal(err)
	}
	got := []any{*iv, *zero, *on, *yes, *off, *eps, *epsCSV, *arr, *ints, *durs, *labels, *one, *none, *quotas, *joined, *pairs, *unset}
	want := []any{90 * time.Second, time.Duration(0), true, true, false,
		[]string{"https://a:2379", "b,with comma", "3"}, []string{"a", "b"}, []string{"x", "y,z"},
		[]int{1, 2, 3}, []time.Duration{time.Second, 2 * time.Minute},
		map[string]string{"role": "web", "note": "a,b", "eq": "x=y"}, map[string]string{"role": "web"},
		map[string]string(nil), map[string]int64{"a": 8 << 30}, "a,1,2.5", "a=1,b=2", "default"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("flags (-want +got):\n%s", diff)
	}
	if !fs.Changed("labels") || fs.Changed("unset") || fs.Changed("no-labels") {
		t.Fatalf("changed: labels %v, unset %v, no-labels %v; want true, false, false",
			fs.Changed("labels"), fs.Changed("unset"), fs.Changed("no-labels"))
	}
}

// A value of the wrong type names its key and the type wanted, and no flag
// changes (ok: 1 is a good setting beside it).
func TestApplyWrongType(t *testing.T) {
	for _, tc := range []struct {
		yaml, want string
	}{
		{`etcd-quota-bytes: "abc"`, `config etcd-quota-bytes: "abc" is not an integer`},
		{"etcd-quota-bytes: 1.5", "config etcd-quota-bytes: 1.5 is not an integer"},
		{"etcd-quota-bytes: 1e20", "config etcd-quota-bytes: 1e+20 is not an exact integer"},
		{"etcd-quota-bytes: 9223372036854775808", "config etcd-quota-bytes: 9223372036854775808 is out of range for int64"},
		{"etcd-quota-bytes: true", "config etcd-quota-bytes: true is not an integer"},
		{"etcd-quota-bytes: [1, 2]", "config etcd-quota-bytes: a list is not an integer"},
		{"etcd-quota-bytes: {a: 1}", "config etcd-quota-bytes: a map is not an integer"},
		{"small: 300", "config small: 300 is out of range for int8"},
		{"events: -1", "config events: -1 is not a non-negative integer"},
		{"rate: fast", `config rate: "fast" is not a number`},
		{"rate: 1e400", `config rate: "1e400" is out of range for float64`},
		{"enabled: maybe", `config enabled: "maybe" is not a boolean (true or false)`},
		{"enabled: 1", "config enabled: 1 is not a boolean (true or false)"},
		{"interval: 30", "config interval: 30 is not a duration: give it a unit"},
		{"interval: soon", `config interval: "soon" is not a duration`},
		{"ports: [1, x]", `config ports[1]: "x" is not an integer`},
		{"labels: {a: [1]}", "config labels.a: a list is not a string"},
		{"labels: [a]", "config labels: a list is not a map"},
		{"labels: {a=b: c}", `config labels: key "a=b": a key cannot hold '=' or ','`},
		{"listen: {a: [x]}", "config listen.a: a list is not a string"},
		{"listen: [[x]]", "config listen[0]: a list is not a string"},
		{"filled: {}", "config filled: {} cannot empty this flag (its default is [d=1])"},
	} {
		t.Run(tc.yaml, func(t *testing.T) {
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			fs.Int64("etcd-quota-bytes", 2<<30, "")
			fs.Int8("small", 0, "")
			fs.Uint64("events", 0, "")
			fs.Float64("rate", 0, "")
			fs.Bool("enabled", false, "")
			fs.Duration("interval", 0, "")
			fs.IntSlice("ports", nil, "")
			fs.StringToString("labels", nil, "")
			fs.String("listen", "", "")
			fs.StringToString("filled", map[string]string{"d": "1"}, "")
			ok := fs.Int("ok", 7, "")
			err := applyFile(t, fs, writeConfig(t, "ok: 1\n"+tc.yaml+"\n"))
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one starting %q", err, tc.want)
			}
			if *ok != 7 || fs.Changed("ok") {
				t.Fatalf("ok = %d (changed %v): a bad file changed a flag", *ok, fs.Changed("ok"))
			}
		})
	}
}

// A flag of the program's own type parses a file value itself, and its
// error is said without pflag's "invalid argument for --flag".
func TestApplyOwnTypeError(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"size: abc", `config size: "abc" is not a size`},
		{"size: 1.5", `config size: "1.5" is not a size`},
		{"size: [1, 2]", `config size: "1,2" is not a size`},
	} {
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		var size sizeValue
		fs.Var(&size, "size", "")
		if err := applyFile(t, fs, writeConfig(t, tc.yaml)); err == nil || err.Error() != tc.want {
			t.Errorf("%q: err = %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

// Command line over environment over file over default, for every pair of
// layers; the config file itself may be named by its environment variable.
func TestApplyLayers(t *testing.T) {
	path := writeConfig(t, "cli-env-file: file\nenv-file: file\nfile: file\ncli-file: file\n")
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	names := []string{"cli-env-file", "env-file", "file", "cli-file", "cli-env", "env", "none"}
	vals := map[string]*string{}
	for _, n := range names {
		vals[n] = fs.String(n, "default", "")
	}
	fs.String("config", "", "")
	if err := fs.Parse([]string{"--cli-env-file", "cli", "--cli-file", "cli", "--cli-env", "cli"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("T_CONFIG", path)
	for _, n := range []string{"cli-env-file", "env-file", "cli-env", "env"} {
		t.Setenv(EnvName("T_", n), "env")
	}
	t.Setenv("T_NOT_A_FLAG", "x")
	if err := Apply(fs, "T_", "config"); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, n := range names {
		got[n] = *vals[n]
	}
	want := map[string]string{
		"cli-env-file": "cli", "env-file": "env", "file": "file", "cli-file": "cli",
		"cli-env": "cli", "env": "env", "none": "default",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("flags (-want +got):\n%s", diff)
	}
}

// An environment value is parsed by its flag, as on the command line: a
// comma-separated list, and an error naming the variable.
func TestApplyEnvParsedByFlag(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	eps := fs.StringSlice("endpoints", nil, "")
	n := fs.Int64("etcd-quota-bytes", 0, "")
	t.Setenv("T_ENDPOINTS", "a,b")
	t.Setenv("T_ETCD_QUOTA_BYTES", "8589934592")
	if err := Apply(fs, "T_", "config"); err != nil {
		t.Fatal(err)
	}
	if strings.Join(*eps, "|") != "a|b" || *n != 8<<30 {
		t.Fatalf("endpoints %q, etcd-quota-bytes %d", *eps, *n)
	}
	fs = pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.Int64("etcd-quota-bytes", 0, "")
	t.Setenv("T_ETCD_QUOTA_BYTES", "1e6")
	if err := Apply(fs, "T_", "config"); err == nil || !strings.Contains(err.Error(), "T_ETCD_QUOTA_BYTES") {
		t.Fatalf("err = %v, want one naming T_ETCD_QUOTA_BYTES", err)
	}
}

// Every unknown key is named, sorted; the config flag is no setting of the
// file; a file that is not YAML is an error naming the file.
func TestApplyFileErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"zz: 1\nlisten: x\naa: 2\nconfig: other.yaml\n", "unknown setting(s) aa, config, zz"},
		{"listen: [x\n", "config file "},
		{"- listen\n", "config file "},
	} {
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		listen := fs.String("listen", "default", "")
		err := applyFile(t, fs, writeConfig(t, tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want one containing %q", tc.yaml, err, tc.want)
		}
		if *listen != "default" {
			t.Errorf("%q: listen = %q: a bad file changed a flag", tc.yaml, *listen)
		}
	}
}
