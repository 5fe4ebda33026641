// Package config fills a program's flags from, in rising precedence, a YAML
// config file, the environment and the command line, so every flag can be set
// by systemd units and Kubernetes manifests as well as by hand.
package config

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// EnvName returns the environment variable for a flag: prefix + upper-case
// flag name with '-' as '_' (e.g. MPFLEET_AGENT_HOST_ID for host-id).
func EnvName(prefix, flag string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Apply sets every flag not given on the command line from the environment
// (envPrefix + NAME) or, failing that, from the YAML file named by the flag
// configFlag (keys are flag names; lists may be YAML sequences). Unknown keys
// in the file are an error naming them. fs must already be parsed.
func Apply(fs *pflag.FlagSet, envPrefix, configFlag string) error {
	file := map[string]any{}
	if cf := fs.Lookup(configFlag); cf != nil {
		path := cf.Value.String()
		if !cf.Changed {
			if v, ok := os.LookupEnv(EnvName(envPrefix, configFlag)); ok {
				path = v
			}
		}
		if path != "" {
			b, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("config file: %w", err)
			}
			if err := yaml.Unmarshal(b, &file); err != nil {
				return fmt.Errorf("config file %s: %w", path, err)
			}
			var unknown []string
			for k := range file {
				if fs.Lookup(k) == nil || k == configFlag {
					unknown = append(unknown, k)
				}
			}
			if len(unknown) > 0 {
				sort.Strings(unknown)
				return fmt.Errorf("config file %s: unknown setting(s) %s", path, strings.Join(unknown, ", "))
			}
		}
	}
	var errs []string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == configFlag {
			return
		}
		if v, ok := os.LookupEnv(EnvName(envPrefix, f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", EnvName(envPrefix, f.Name), err))
			}
			return
		}
		v, ok := file[f.Name]
		if !ok {
			return
		}
		var s string
		switch x := v.(type) {
		case []any:
			parts := make([]string, len(x))
			for i, p := range x {
				parts[i] = fmt.Sprint(p)
			}
			s = strings.Join(parts, ",")
		case map[string]any:
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			parts := make([]string, len(keys))
			for i, k := range keys {
				parts[i] = fmt.Sprintf("%s=%v", k, x[k])
			}
			s = strings.Join(parts, ",")
		default:
			s = fmt.Sprint(x)
		}
		if err := fs.Set(f.Name, s); err != nil {
			errs = append(errs, fmt.Sprintf("config %s: %v", f.Name, err))
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}
