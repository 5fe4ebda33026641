package cli

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
)

// manifestExts are the file name endings -f DIR reads.
var manifestExts = []string{".yaml", ".yml", ".json"}

// fileFlags are the -f and -R flags of the commands that read manifests.
type fileFlags struct {
	files     []string // -f, repeated: files, directories, "-" for stdin
	recursive bool     // -R: -f DIR also reads subdirectories
}

// add registers -f (and -R) on cmd.
func (ff *fileFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringArrayVarP(&ff.files, "filename", "f", nil,
		"YAML or JSON file of Group documents, or a directory of them (*.yaml, *.yml, *.json); repeatable; - for stdin")
	cmd.Flags().BoolVarP(&ff.recursive, "recursive", "R", false, "with -f DIR, also read the directory's subdirectories")
}

// manifestFiles expands the -f values into the files to read, in order:
// a directory gives its *.yaml, *.yml and *.json files sorted by name (its
// subdirectories too with recursive). A file named twice is read once.
func manifestFiles(args []string, recursive bool) ([]string, error) {
	if len(args) == 0 {
		return nil, usagef("-f FILE is required (-f - reads stdin; -f DIR reads a directory)")
	}
	var (
		out   []string
		seen  = map[string]bool{}
		stdin = 0
	)
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, arg := range args {
		switch arg {
		case "":
			return nil, usagef("-f: empty file name")
		case "-":
			if stdin++; stdin > 1 {
				return nil, usagef("-f -: stdin can be read once")
			}
			add(arg)
			continue
		}
		st, err := os.Stat(arg)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			add(arg)
			continue
		}
		found, err := dirManifests(arg, recursive)
		if err != nil {
			return nil, err
		}
		if len(found) == 0 {
			return nil, fmt.Errorf("%s: no %s files in the directory", arg, strings.Join(manifestExts, ", "))
		}
		for _, p := range found {
			add(p)
		}
	}
	return out, nil
}

// dirManifests lists the manifest files of dir, sorted; with recursive,
// those of its subdirectories too (filepath.WalkDir visits in lexical
// order).
func dirManifests(dir string, recursive bool) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != dir && !recursive {
				return filepath.SkipDir
			}
			return nil
		}
		if slices.Contains(manifestExts, strings.ToLower(filepath.Ext(p))) {
			out = append(out, p)
		}
		return nil
	})
	return out, err
}

// readManifests reads and parses every file -f names. Every document of
// every file is checked before anything is returned, so that a bad one
// changes nothing; an error names the file and the document. With more
// than one file, each manifest records its file, for later messages.
func (a *app) readManifests(ff fileFlags) ([]*manifest, error) {
	files, err := manifestFiles(ff.files, ff.recursive)
	if err != nil {
		return nil, err
	}
	var (
		out  []*manifest
		errs []error
		seen = map[string]*manifest{}
	)
	for _, file := range files {
		var (
			data   []byte
			source = file
		)
		if file == "-" {
			source = "stdin"
			data, err = io.ReadAll(a.io.in)
		} else {
			data, err = os.ReadFile(file)
		}
		if err != nil {
			return nil, err
		}
		ms, err := parseManifests(source, data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, m := range ms {
			if len(files) > 1 {
				m.Source = source
			}
			if first, dup := seen[m.ID]; dup {
				errs = append(errs, fmt.Errorf("%s: document %d (line %d): name: group %q already appears in %s document %d",
					source, m.Index, m.Line, m.ID, first.Source, first.Index))
				continue
			}
			seen[m.ID] = m
			out = append(out, m)
		}
	}
	if err := firstOf(errs, "files with problems"); err != nil {
		return nil, err
	}
	return out, nil
}

// where names a manifest's document in messages: "document 2, line 14",
// prefixed by its file when several were read.
func (m *manifest) where() string {
	s := fmt.Sprintf("document %d, line %d", m.Index, m.Line)
	if m.Source != "" {
		s = m.Source + " " + s
	}
	return s
}
