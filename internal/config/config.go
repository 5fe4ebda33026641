// Package config fills a program's flags from, in rising precedence, a YAML
// config file, the environment and the command line, so every flag can be set
// by systemd units and Kubernetes manifests as well as by hand.
//
// koanf reads the sources: the file through its YAML parser (YAML 1.2, so
// 1000000 is an integer, 1e6 a float and yes a string) and the environment
// through its env provider. A file value is checked against its flag's type
// and handed to the flag in the text the command line would take, its
// digits kept: integers exactly (8589934592, 2^53+1), floats in their
// shortest exact form. An integer flag also takes a float that is integral
// and within ±2^53 (1e6 is 1000000) and refuses any other float. An
// environment variable's value goes to the flag as it is, parsed by the flag
// like the command line.
package config

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"
)

// EnvName returns the environment variable for a flag: prefix + upper-case
// flag name with '-' as '_' (e.g. MPFLEET_AGENT_HOST_ID for host-id).
func EnvName(prefix, flag string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Apply sets every flag not given on the command line from the environment
// (envPrefix + NAME) or, failing that, from the YAML file named by the flag
// configFlag (keys are flag names; lists may be YAML sequences, k=v flags
// YAML maps; a null value leaves the flag alone). Unknown keys in the file
// are an error naming them, and so is a value of the wrong type for its
// flag, named with the type wanted: then no flag is changed (a flag of the
// program's own type, defined with fs.Var, parses its text only when set, so
// flags may have been set before its error). fs must already be parsed.
func Apply(fs *pflag.FlagSet, envPrefix, configFlag string) error {
	envs, err := loadEnv(fs, envPrefix)
	if err != nil {
		return err
	}
	var file map[string]any
	if cf := fs.Lookup(configFlag); cf != nil {
		path := cf.Value.String()
		if !cf.Changed && envs.Exists(configFlag) {
			path = envs.String(configFlag)
		}
		if path != "" {
			if file, err = loadFile(fs, path, configFlag); err != nil {
				return err
			}
		}
	}

	var (
		plan []setting
		errs []string
	)
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == configFlag {
			return
		}
		if envs.Exists(f.Name) {
			plan = append(plan, setting{flag: f, source: EnvName(envPrefix, f.Name), text: envs.String(f.Name)})
			return
		}
		v, ok := file[f.Name]
		if !ok {
			return
		}
		s, ok, err := fileSetting(f, v)
		if err != nil {
			errs = append(errs, err.Error())
		} else if ok {
			plan = append(plan, s)
		}
	})
	if len(errs) == 0 {
		for _, s := range plan {
			if err := s.apply(fs); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// loadEnv reads the environment variables of fs's flags, keyed by flag name.
func loadEnv(fs *pflag.FlagSet, prefix string) (*koanf.Koanf, error) {
	names := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) { names[EnvName(prefix, f.Name)] = f.Name })
	k := koanf.New(".")
	err := k.Load(env.Provider("", env.Opt{
		Prefix: prefix,
		TransformFunc: func(key, value string) (string, any) {
			return names[key], value // "" (not a flag's) drops it
		},
	}), nil)
	if err != nil {
		return nil, fmt.Errorf("environment: %w", err)
	}
	return k, nil
}

// loadFile parses the YAML file at path into its top-level keys, each a
// flag's name, refusing keys that name no flag (or configFlag itself).
func loadFile(fs *pflag.FlagSet, path, configFlag string) (map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	k := koanf.New(".")
	if err := k.Load(rawbytes.Provider(b), yaml.Parser()); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	file := k.Raw()
	var unknown []string
	for key := range file {
		if fs.Lookup(key) == nil || key == configFlag {
			unknown = append(unknown, key)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("config file %s: unknown setting(s) %s", path, strings.Join(unknown, ", "))
	}
	return file, nil
}
