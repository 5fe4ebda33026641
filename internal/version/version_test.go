package version

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
)

const sha = "0123456789abcdef0123456789abcdef01234567"

func vcs(revision, vcsTime, modified string) *debug.BuildInfo {
	return &debug.BuildInfo{
		GoVersion: "go1.26.1",
		Main:      debug.Module{Path: "github.com/mpfleet/mpfleet", Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: revision},
			{Key: "vcs.time", Value: vcsTime}, {Key: "vcs.modified", Value: modified},
		},
	}
}

// TestGet: the link-time values win, then the go command's build
// information, and "dev" only when neither says anything.
func TestGet(t *testing.T) {
	date := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	platform := runtime.GOOS + "/" + runtime.GOARCH
	pseudo := vcs(sha, "2026-01-02T03:04:05Z", "true")
	pseudo.Main.Version = "v0.0.0-20260102030405-0123456789ab+dirty"
	for _, tc := range []struct {
		name                  string
		version, commit, date string
		bi                    *debug.BuildInfo
		want                  Info
	}{
		{
			"make build", "v1.2.3-4-g0123456-dirty", sha, "2026-01-02T03:04:05Z", vcs("ffff", "2020-01-01T00:00:00Z", "false"),
			Info{Version: "v1.2.3-4-g0123456-dirty", Commit: sha, Date: date, Modified: true, GoVersion: "go1.26.1", Platform: platform},
		},
		{
			"go build in a checkout", "", "", "", pseudo,
			Info{Version: "v0.0.0-20260102030405-0123456789ab+dirty", Commit: sha, Date: date, Modified: true, GoVersion: "go1.26.1", Platform: platform},
		},
		{
			"go build, VCS stamps only", "", "", "", vcs(sha, "2026-01-02T03:04:05Z", "false"),
			Info{Version: "0123456", Commit: sha, Date: date, GoVersion: "go1.26.1", Platform: platform},
		},
		{
			"go build, VCS stamps only, modified", "", "", "", vcs(sha, "2026-01-02T03:04:05Z", "true"),
			Info{Version: "0123456-dirty", Commit: sha, Date: date, Modified: true, GoVersion: "go1.26.1", Platform: platform},
		},
		{
			"go install of a release", "", "", "", &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Version: "v1.2.3"}},
			Info{Version: "v1.2.3", GoVersion: "go1.26.1", Platform: platform},
		},
		{
			"go run", "", "", "", &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Version: "(devel)"}},
			Info{Version: Dev, GoVersion: "go1.26.1", Platform: platform},
		},
		{
			"no build information", "", "", "", nil,
			Info{Version: Dev, GoVersion: runtime.Version(), Platform: platform},
		},
		{
			"version only, a bad date", "v1.2.3", "", "yesterday", nil,
			Info{Version: "v1.2.3", GoVersion: runtime.Version(), Platform: platform},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, get(tc.version, tc.commit, tc.date, tc.bi)); diff != "" {
				t.Errorf("get (-want +got):\n%s", diff)
			}
		})
	}
}

func TestString(t *testing.T) {
	i := Info{Version: "v1.2.3", Commit: sha, Date: time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600)), GoVersion: "go1.26.1", Platform: "linux/amd64"}
	if got, want := i.String(), "v1.2.3 (commit "+sha+", built 2026-01-02T02:04:05Z, go1.26.1 linux/amd64)"; got != want {
		t.Errorf("String:\n got %s\nwant %s", got, want)
	}
	if got, want := (Info{Version: Dev, GoVersion: "go1.26.1", Platform: "linux/amd64"}).String(), "dev (go1.26.1 linux/amd64)"; got != want {
		t.Errorf("String of a bare build: %q, want %q", got, want)
	}
	if got := Line("mpfleet-agent"); got != "mpfleet-agent "+Get().String() {
		t.Errorf("Line: %q", got)
	}
}

// TestMessage: the API form carries everything, and back.
func TestMessage(t *testing.T) {
	i := Info{Version: "v1.2.3", Commit: sha, Date: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Modified: true, GoVersion: "go1.26.1", Platform: "linux/arm64"}
	if diff := cmp.Diff(i, FromMessage(i.Message())); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	bare := Info{Version: Dev, GoVersion: "go1.26.1", Platform: "linux/amd64"}
	if m := bare.Message(); m.BuildTime != nil || !cmp.Equal(bare, FromMessage(m)) {
		t.Errorf("no date: %v", m)
	}
	if m := i.Message(); proto.Size(m) == 0 || m.GetBuildTime().AsTime() != i.Date {
		t.Errorf("message %v", m)
	}
}
