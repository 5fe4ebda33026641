// Package version says which build of mpfleet is running: the version,
// commit and build date `make build` stamps into the binary with -ldflags
// -X, else what the go command recorded (module version and VCS stamps), and
// "dev" only when neither says anything (go run, or a build outside a
// checkout).
//
//	go build -ldflags "-X github.com/mpfleet/mpfleet/internal/version.Version=v1.2.3 \
//	  -X github.com/mpfleet/mpfleet/internal/version.Commit=$(git rev-parse HEAD) \
//	  -X github.com/mpfleet/mpfleet/internal/version.Date=2026-01-02T03:04:05Z"
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

// Set at link time by make build (-ldflags -X); empty otherwise.
var (
	// Version is the release, `git describe --tags --always --dirty`:
	// v1.2.3, v1.2.3-4-gabc1234, abc1234-dirty.
	Version string
	// Commit is the full commit hash.
	Commit string
	// Date is when the commit was made (not when it was built, so that a
	// build is reproducible), RFC 3339.
	Date string
)

// Dev is the version of a build that says nothing about itself.
const Dev = "dev"

// Info is what a binary knows of its build.
type Info struct {
	// Version is the release, or the module's pseudo-version, or Dev.
	Version string
	// Commit is the commit hash; empty if not known.
	Commit string
	// Date is the commit's time; zero if not known.
	Date time.Time
	// Modified is set when the build had uncommitted changes.
	Modified bool
	// GoVersion is the Go release that built it, go1.26.1.
	GoVersion string
	// Platform is GOOS/GOARCH, linux/amd64.
	Platform string
}

// Get returns the running binary's build information: the -ldflags values
// where set, the go command's build information for the rest.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return get(Version, Commit, Date, bi)
}

// get merges the link-time values with bi (nil: none).
func get(version, commit, date string, bi *debug.BuildInfo) Info {
	i := Info{
		Version:   version,
		Commit:    commit,
		GoVersion: runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
	}
	i.Date, _ = time.Parse(time.RFC3339, date)
	i.Modified = strings.HasSuffix(version, "-dirty")
	var modVersion, revision, vcsTime string
	if bi != nil {
		if bi.GoVersion != "" {
			i.GoVersion = bi.GoVersion
		}
		modVersion = bi.Main.Version
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.time":
				vcsTime = s.Value
			case "vcs.modified":
				if version == "" {
					i.Modified = s.Value == "true"
				}
			}
		}
	}
	if i.Commit == "" {
		i.Commit = revision
	}
	if i.Date.IsZero() {
		i.Date, _ = time.Parse(time.RFC3339, vcsTime)
	}
	switch {
	case i.Version != "":
	case modVersion != "" && modVersion != "(devel)":
		// The go command's version of the main module: a tag, or a
		// pseudo-version from VCS (v0.0.0-20260102030405-abcdef123456,
		// +dirty with uncommitted changes).
		i.Version = modVersion
	case revision != "":
		i.Version = shortHash(revision)
		if i.Modified {
			i.Version += "-dirty"
		}
	default:
		i.Version = Dev
	}
	return i
}

// shortHash abbreviates a commit hash as git describe does.
func shortHash(h string) string {
	if len(h) > 7 {
		return h[:7]
	}
	return h
}

// String is the version followed by what else is known:
// "v1.2.3 (commit 0123abc…, built 2026-01-02T03:04:05Z, go1.26.1 linux/amd64)".
func (i Info) String() string {
	var b strings.Builder
	b.WriteString(i.Version + " (")
	if i.Commit != "" {
		b.WriteString("commit " + i.Commit + ", ")
	}
	if !i.Date.IsZero() {
		b.WriteString("built " + i.Date.UTC().Format(time.RFC3339) + ", ")
	}
	fmt.Fprintf(&b, "%s %s)", i.GoVersion, i.Platform)
	return b.String()
}

// Line is what a program's --version prints: its name and String,
// "mpfleet-agent v1.2.3 (commit …, built …, go1.26.1 linux/amd64)".
func Line(program string) string {
	return program + " " + Get().String()
}
