package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metricsql"
	"github.com/prometheus/common/model"
	"sigs.k8s.io/yaml"
)

// The Grafana dashboard and the Prometheus rules in deploy/observability are
// checked here without a Prometheus: every query parses (metricsql's parser,
// a superset of PromQL, plus the PromQL rules it relaxes: a range on every
// rollup function), the rule file has Prometheus's shape, strictly, and
// names only metrics the programs export (observability_linux_test.go
// scrapes a real controller and real agents for that).

const observabilityDir = "observability"

// ruleFile is Prometheus's rule file format (rules.yaml), the fields mpfleet
// uses; strict decoding refuses any other.
type ruleFile struct {
	Groups []struct {
		Name     string `json:"name"`
		Interval string `json:"interval,omitempty"`
		Rules    []struct {
			Alert         string            `json:"alert,omitempty"`
			Record        string            `json:"record,omitempty"`
			Expr          string            `json:"expr"`
			For           string            `json:"for,omitempty"`
			KeepFiringFor string            `json:"keep_firing_for,omitempty"`
			Labels        map[string]string `json:"labels,omitempty"`
			Annotations   map[string]string `json:"annotations,omitempty"`
		} `json:"rules"`
	} `json:"groups"`
}

// query is one PromQL expression and where it stands.
type query struct{ where, expr string }

// builtinMetrics are series Prometheus makes itself, which no program
// exports.
var builtinMetrics = []string{"up", "scrape_duration_seconds", "scrape_samples_scraped"}

// rollupFuncs need a range vector in PromQL (metricsql would take one
// without).
var rollupFuncs = []string{"rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets",
	"avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
	"quantile_over_time", "stddev_over_time", "stdvar_over_time", "present_over_time", "absent_over_time"}

// alertQueries reads the alert rules, strictly, and returns their queries.
func alertQueries(t *testing.T) []query {
	t.Helper()
	path := filepath.Join(observabilityDir, "alerts.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.UnmarshalStrict(b, &rf); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(rf.Groups) == 0 {
		t.Fatalf("%s: no rule groups", path)
	}
	var qs []query
	names := map[string]bool{}
	for _, g := range rf.Groups {
		if g.Name == "" || names[g.Name] {
			t.Errorf("%s: group name %q empty or repeated", path, g.Name)
		}
		names[g.Name] = true
		for i, r := range g.Rules {
			where := fmt.Sprintf("%s: group %s rule %d (%s%s)", path, g.Name, i, r.Alert, r.Record)
			if (r.Alert == "") == (r.Record == "") {
				t.Errorf("%s: a rule is an alert or a record, exactly one", where)
			}
			for _, d := range []string{r.For, r.KeepFiringFor, g.Interval} {
				if _, err := model.ParseDuration(d); d != "" && err != nil {
					t.Errorf("%s: duration %q: %v", where, d, err)
				}
			}
			if r.Alert != "" {
				if s := r.Labels["severity"]; !slices.Contains([]string{"critical", "warning", "info"}, s) {
					t.Errorf("%s: severity %q, want critical, warning or info", where, s)
				}
				if r.Annotations["summary"] == "" {
					t.Errorf("%s: no summary annotation", where)
				}
			}
			qs = append(qs, query{where, r.Expr})
		}
	}
	return qs
}

// dashboardQueries reads the Grafana dashboard and returns its queries.
func dashboardQueries(t *testing.T) []query {
	t.Helper()
	path := filepath.Join(observabilityDir, "grafana-dashboard.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
		t.Fatalf("%s: no uid, title or panels", path)
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	var qs []query
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("%s: panel id %d repeated", path, p.ID)
		}
		ids[p.ID] = true
		if len(p.Targets) == 0 {
			t.Errorf("%s: panel %q has no query", path, p.Title)
		}
		for _, tg := range p.Targets {
			// Grafana's variables must be defined; they stand in label
			// values, so a value stands in for them when parsing.
			expr := regexp.MustCompile(`\$\{?(\w+)\}?`).ReplaceAllStringFunc(tg.Expr, func(v string) string {
				name := strings.Trim(v, "${}")
				if !vars[name] {
					t.Errorf("%s: panel %q uses $%s, which the dashboard does not define", path, p.Title, name)
				}
				return "x"
			})
			qs = append(qs, query{fmt.Sprintf("%s: panel %q", path, p.Title), expr})
		}
	}
	return qs
}

// queryMetrics parses q and returns the metric names it reads.
func queryMetrics(q query) ([]string, error) {
	e, err := metricsql.Parse(q.expr)
	if err != nil {
		return nil, fmt.Errorf("%s: %q does not parse: %w", q.where, q.expr, err)
	}
	var names []string
	var errs []string
	metricsql.VisitAll(e, func(e metricsql.Expr) {
		switch x := e.(type) {
		case *metricsql.MetricExpr:
			for _, lfs := range x.LabelFilterss {
				if len(lfs) == 0 || lfs[0].Label != "__name__" || lfs[0].IsRegexp || lfs[0].IsNegative {
					errs = append(errs, "a selector without a metric name")
					continue
				}
				names = append(names, lfs[0].Value)
			}
		case *metricsql.FuncExpr:
			if !slices.Contains(rollupFuncs, x.Name) {
				return
			}
			for _, a := range x.Args {
				if r, ok := a.(*metricsql.RollupExpr); !ok || r.Window == nil {
					errs = append(errs, x.Name+"() without a range (PromQL needs one)")
				}
			}
		}
	})
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s: %q: %s", q.where, q.expr, strings.Join(errs, "; "))
	}
	return names, nil
}

// observabilityMetrics returns the metric names the dashboard and the rules
// read (the histograms' _bucket, _sum and _count series by the histogram's
// name), each with where it is read, less Prometheus's own.
func observabilityMetrics(t *testing.T) map[string][]string {
	t.Helper()
	uses := map[string][]string{}
	for _, q := range append(alertQueries(t), dashboardQueries(t)...) {
		names, err := queryMetrics(q)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, n := range names {
			if slices.Contains(builtinMetrics, n) {
				continue
			}
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(n, suffix); ok && strings.HasSuffix(b, "_seconds") {
					n = b
				}
			}
			uses[n] = append(uses[n], q.where)
		}
	}
	return uses
}

func TestObservabilityQueries(t *testing.T) {
	uses := observabilityMetrics(t)
	if len(uses) < 10 {
		t.Errorf("the dashboard and the rules read %d metrics; want the fleet's, the rollouts', etcd's and the agents'", len(uses))
	}
	var names []string
	for n := range uses {
		names = append(names, n)
		if !strings.HasPrefix(n, "mpfleet_") && !strings.HasPrefix(n, "grpc_server_") {
			t.Errorf("%s (%s) is not one of mpfleet's metrics", n, uses[n][0])
		}
	}
	sort.Strings(names)
	t.Logf("metrics read: %s", strings.Join(names, " "))
}

func TestObservabilityQueryCheck(t *testing.T) {
	// The checks themselves must be able to fail.
	for _, bad := range []string{`rate(mpfleet_agent_apply_failures_total)`, `sum(mpfleet_x{`, `{job="x"}`, `sum by (le) (rate(x[5m])`} {
		if _, err := queryMetrics(query{"test", bad}); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
	got, err := queryMetrics(query{"test", `histogram_quantile(0.9, sum by (le) (rate(a_seconds_bucket[5m]))) / on() b{x="y"}`})
	if err != nil || !slices.Equal(got, []string{"a_seconds_bucket", "b"}) {
		t.Errorf("metrics = %v, %v; want a_seconds_bucket, b", got, err)
	}
}

func TestPrometheusExample(t *testing.T) {
	path := filepath.Join(observabilityDir, "prometheus.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Global struct {
			ScrapeInterval string `json:"scrape_interval"`
		} `json:"global"`
		RuleFiles     []string `json:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, rf := range c.RuleFiles {
		if _, err := os.Stat(filepath.Join(observabilityDir, rf)); err != nil {
			t.Errorf("%s: rule file %s: %v", path, rf, err)
		}
	}
	var jobs []string
	for _, sc := range c.ScrapeConfigs {
		jobs = append(jobs, sc.JobName)
	}
	// The alert rules name the controller's job.
	if !slices.Contains(jobs, "mpfleet-controller") || !slices.Contains(jobs, "mpfleet-agent") {
		t.Errorf("%s: jobs %v, want mpfleet-controller and mpfleet-agent", path, jobs)
	}
}
