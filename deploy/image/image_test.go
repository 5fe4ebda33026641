package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/mpfleet/mpfleet/internal/nstest"
)

// TestImageMpfleetctl builds a static mpfleetctl stamped as make build
// stamps it, makes its image with the command's flags, and reads the OCI
// archive back: its tar entries, index.json and its annotations, the media
// types, the config, the layer's files and owners, the binary run from the
// layer, manifest.json for Docker, and the same digest (and archive, byte
// for byte) from a second build after the binary's mtime changed.
func TestImageMpfleetctl(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mpfleetctl: not in -short mode")
	}
	if _, err := exec.LookPath("go"); err != nil {
		nstest.Skip(t, "go is not on PATH: "+err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	const (
		version = "v9.8.7-42-gabcdef1"
		commit  = "0123456789abcdef0123456789abcdef01234567"
		date    = "2026-01-02T03:04:05Z"
		pkg     = "github.com/mpfleet/mpfleet/internal/version"
	)
	root := strings.TrimSpace(output(ctx, t, ".", nil, "go", "list", "-m", "-f", "{{.Dir}}"))
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "bin", "mpfleetctl")
	output(ctx, t, root, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + runtime.GOARCH},
		"go", "build", "-trimpath",
		"-ldflags", "-s -w -X "+pkg+".Version="+version+" -X "+pkg+".Commit="+commit+" -X "+pkg+".Date="+date,
		"-o", bin, "./cli/cmd/mpfleetctl")

	ref := "ghcr.io/mpfleet/mpfleetctl:" + version
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	build := func(out string) (file string, digest v1.Hash, fileSum [32]byte) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		err := run([]string{"--out", out, "--version", version, "--commit", commit, "--date", date,
			"--platform", "linux/" + runtime.GOARCH, bin}, &stdout, &stderr)
		if err != nil {
			t.Fatalf("run: %v (stderr: %s)", err, stderr.String())
		}
		file = filepath.Join(out, "mpfleetctl.oci.tar")
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		_, desc := readArchive(t, file, created)
		digest = desc.Digest
		if want := file + "\t" + ref + "@" + digest.String() + "\n"; stdout.String() != want {
			t.Errorf("run printed %q, want %q", stdout.String(), want)
		}
		return file, digest, sha256.Sum256(b)
	}
	file, digest1, sum1 := build(filepath.Join(tmp, "out1"))
	img, desc := readArchive(t, file, created)

	// index.json: the one manifest, its digest the image's, annotated
	// with the tag and the full reference, for this platform.
	if d, err := img.Digest(); err != nil || d != desc.Digest {
		t.Errorf("image digest %s (%v), index.json names %s", d, err, desc.Digest)
	}
	wantDesc := v1.Descriptor{
		MediaType: types.OCIManifestSchema1,
		Platform:  &v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Annotations: map[string]string{
			"org.opencontainers.image.ref.name": version,
			"io.containerd.image.name":          ref,
		},
	}
	gotDesc := v1.Descriptor{MediaType: desc.MediaType, Platform: desc.Platform, Annotations: desc.Annotations}
	if diff := cmp.Diff(wantDesc, gotDesc); diff != "" {
		t.Errorf("index.json manifest descriptor (-want +got):\n%s", diff)
	}

	// The manifest and config: OCI media types, digests and sizes that
	// match the blobs.
	if err := validate.Image(img); err != nil {
		t.Errorf("image does not validate: %v", err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("manifest media type %q, config %q; want %q, %q",
			m.MediaType, m.Config.MediaType, types.OCIManifestSchema1, types.OCIConfigJSON)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	type config struct {
		OS, Architecture   string
		Created            time.Time
		Entrypoint, Cmd    []string
		User, WorkingDir   string
		Env                []string
		Labels             map[string]string
		Layers, HistoryLen int
	}
	got := config{
		OS: cf.OS, Architecture: cf.Architecture, Created: cf.Created.UTC(),
		Entrypoint: cf.Config.Entrypoint, Cmd: cf.Config.Cmd,
		User: cf.Config.User, WorkingDir: cf.Config.WorkingDir, Env: cf.Config.Env,
		Labels: cf.Config.Labels, Layers: len(cf.RootFS.DiffIDs), HistoryLen: len(cf.History),
	}
	want := config{
		OS: "linux", Architecture: runtime.GOARCH, Created: created,
		Entrypoint: []string{"/usr/bin/mpfleetctl"},
		User:       "65532:65532", WorkingDir: "/",
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Labels: map[string]string{
			"org.opencontainers.image.title":    "mpfleetctl",
			"org.opencontainers.image.version":  version,
			"org.opencontainers.image.revision": commit,
			"org.opencontainers.image.source":   "https://github.com/mpfleet/mpfleet",
			"org.opencontainers.image.created":  date,
		},
		Layers: 1, HistoryLen: 1,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("image config (-want +got):\n%s", diff)
	}

	// The layer: what it holds, in order, with fixed times and owners.
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v; want 1", len(layers), err)
	}
	if mt, err := layers[0].MediaType(); err != nil || mt != types.OCILayer {
		t.Errorf("layer media type %q (%v), want %q", mt, err, types.OCILayer)
	}
	type layerFile struct {
		Name           string
		Type           byte
		Mode           int64
		UID, GID       int
		Uname, Gname   string
		ModTimeCreated bool
	}
	var files []layerFile
	contents := map[string][]byte{}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, layerFile{h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime.Equal(created)})
		if h.Typeflag == tar.TypeReg {
			if contents[h.Name], err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	dir, reg := byte(tar.TypeDir), byte(tar.TypeReg)
	wantFiles := []layerFile{
		{"etc/", dir, 0o755, 0, 0, "root", "root", true},
		{"etc/group", reg, 0o644, 0, 0, "root", "root", true},
		{"etc/passwd", reg, 0o644, 0, 0, "root", "root", true},
		{"home/", dir, 0o755, 0, 0, "root", "root", true},
		{"home/nonroot/", dir, 0o700, 65532, 65532, "nonroot", "nonroot", true},
		{"tmp/", dir, 0o1777, 0, 0, "root", "root", true},
		{"usr/", dir, 0o755, 0, 0, "root", "root", true},
		{"usr/bin/", dir, 0o755, 0, 0, "root", "root", true},
		{"usr/bin/mpfleetctl", reg, 0o755, 0, 0, "root", "root", true},
	}
	if diff := cmp.Diff(wantFiles, files); diff != "" {
		t.Errorf("layer files (-want +got):\n%s", diff)
	}
	if !strings.Contains("\n"+string(contents["etc/passwd"]), "\nnonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd has no nonroot user 65532:\n%s", contents["etc/passwd"])
	}
	if !strings.Contains("\n"+string(contents["etc/group"]), "\nnonroot:x:65532:") {
		t.Errorf("/etc/group has no nonroot group 65532:\n%s", contents["etc/group"])
	}

	// The binary in the layer is the one built, and runs.
	extracted := filepath.Join(tmp, "extracted", "mpfleetctl")
	if err := os.MkdirAll(filepath.Dir(extracted), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(extracted, contents["usr/bin/mpfleetctl"], 0o755); err != nil {
		t.Fatal(err)
	}
	if v := output(ctx, t, tmp, nil, extracted, "--version"); !strings.HasPrefix(v, "mpfleetctl "+version+" (commit "+commit+", built ") {
		t.Errorf("mpfleetctl --version from the image: %q, want %q and the commit", v, version)
	}

	// manifest.json, for Docker's classic image store, names the same
	// config and layer blobs under the reference.
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	dimg, err := tarball.ImageFromPath(file, &tag)
	if err != nil {
		t.Fatalf("%s: manifest.json: image %s: %v", file, ref, err)
	}
	if got, err := dimg.ConfigName(); err != nil || got != m.Config.Digest {
		t.Errorf("manifest.json config %s (%v), want %s", got, err, m.Config.Digest)
	}
	if dl, err := dimg.Layers(); err != nil || len(dl) != 1 {
		t.Errorf("manifest.json layers: %d, %v; want 1", len(dl), err)
	} else if got, err := dl[0].Digest(); err != nil || got != m.Layers[0].Digest {
		t.Errorf("manifest.json layer %s (%v), want %s", got, err, m.Layers[0].Digest)
	}

	// Reproducible: the binary's file time plays no part.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(bin, later, later); err != nil {
		t.Fatal(err)
	}
	_, digest2, sum2 := build(filepath.Join(tmp, "out2"))
	if digest1 != digest2 {
		t.Errorf("second build: digest %s, first %s", digest2, digest1)
	}
	if sum1 != sum2 {
		t.Errorf("second build: archive differs from the first (sha256 %x, %x)", sum2, sum1)
	}
}

// TestImageRejects checks that bad flags and binaries that cannot run from
// scratch fail with an error naming the flag or file, writing nothing.
func TestImageRejects(t *testing.T) {
	tmp := t.TempDir()
	text := filepath.Join(tmp, "notes")
	if err := os.WriteFile(text, []byte("not a program\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A dynamically linked system program, built for this machine.
	dynamic := "/bin/sh"
	if _, err := os.Stat(dynamic); err != nil {
		nstest.Skip(t, "no /bin/sh: "+err.Error())
	}
	other := "s390x"
	if runtime.GOARCH == other {
		other = "amd64"
	}
	base := []string{"--version", "v1.2.3", "--date", "2026-01-02T03:04:05Z", "--platform", "linux/" + runtime.GOARCH}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no version", []string{"--platform", "linux/" + runtime.GOARCH, text}, "--version: required"},
		{"bad version", append(base, "--version", "v1 2", text), `--version "v1 2"`},
		{"bad repository", append(base, "--repository", "Ghcr.io/UPPER", text), "--repository"},
		{"bad date", append(base, "--date", "yesterday", text), `--date: "yesterday"`},
		{"not linux", append(base, "--platform", "windows/amd64", text), `--platform: "windows/amd64"`},
		{"no binaries", base, "no binaries"},
		{"missing", append(base, filepath.Join(tmp, "missing")), "missing: no such file"},
		{"not ELF", append(base, text), text + ": not an ELF executable"},
		{"dynamic", append(base, dynamic), dynamic + ": not statically linked: needs the dynamic loader /"},
		{"other arch", append(base, "--platform", "linux/"+other, dynamic), dynamic + ": built for "},
		{"same name", append(base, dynamic, filepath.Join(tmp, "sh")), "both would be image sh"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(tmp, "out")
			args := append([]string{"--out", out}, tc.args...)
			err := run(args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run %q: error %v, want one containing %q", args, err, tc.want)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("run %q failed but made %s (stat: %v)", args, out, err)
			}
		})
	}
}

// readArchive checks the tar entries of the OCI archive file (the image
// layout's files, sorted, times mtime, owner 0:0, no PAX records), unpacks
// it into a temporary directory and reads it back as an image layout: the
// image its index.json names, and the descriptor naming it.
func readArchive(t *testing.T, file string, mtime time.Time) (v1.Image, v1.Descriptor) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	var names []string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		names = append(names, h.Name)
		if !h.ModTime.Equal(mtime) || h.Uid != 0 || h.Gid != 0 || len(h.PAXRecords) != 0 ||
			!h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
			t.Errorf("%s: %s: mtime %v, owner %d:%d, PAX %v, atime %v, ctime %v; want mtime %v, owner 0:0, no PAX or other times",
				file, h.Name, h.ModTime, h.Uid, h.Gid, h.PAXRecords, h.AccessTime, h.ChangeTime, mtime)
		}
		path := filepath.Join(dir, filepath.FromSlash(h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(path, 0o755)
		case tar.TypeReg:
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(path, b, 0o644)
			}
		default:
			t.Fatalf("%s: %s: type %q, want a file or directory", file, h.Name, h.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(names) != 8 || !slices.IsSorted(names) ||
		!slices.Equal(names[:2], []string{"blobs/", "blobs/sha256/"}) ||
		!slices.Equal(names[5:], []string{"index.json", "manifest.json", "oci-layout"}) {
		t.Errorf("%s: entries %q, want blobs/, blobs/sha256/, three blobs, index.json, manifest.json, oci-layout in order", file, names)
	}

	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatalf("%s: index.json: %v", file, err)
	}
	if im.MediaType != types.OCIImageIndex || len(im.Manifests) != 1 {
		t.Fatalf("%s: index.json: media type %q, %d manifests; want %q, 1", file, im.MediaType, len(im.Manifests), types.OCIImageIndex)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatalf("%s: image %s: %v", file, im.Manifests[0].Digest, err)
	}
	return img, im.Manifests[0]
}

// output runs a command in dir with env added to the environment and
// returns its standard output; it fails the test if the command fails.
func output(ctx context.Context, t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}
