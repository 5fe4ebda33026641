package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The unprivileged user the images run as (distroless's "nonroot").
const (
	nonrootID   = 65532
	nonrootName = "nonroot"
	// pathEnv is the image's PATH.
	pathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Spec is what one image is made of.
type Spec struct {
	// Binary is a statically linked Linux executable. Its base name names
	// the program: /usr/bin/<name> in the image, its entrypoint.
	Binary string
	// Version, Commit and Source go into the org.opencontainers.image
	// labels (version, revision, source); empty ones are left out.
	Version, Commit, Source string
	// Created is the image's creation time, label and file times: the
	// commit's time, so that the same inputs give the same image.
	Created time.Time
	// Platform is the image's OS and architecture; the binary must be
	// built for it.
	Platform v1.Platform
}

// Build makes the image of s.Binary from scratch: one layer holding
// /usr/bin/<name> (root-owned, 0755), /etc/passwd and /etc/group with the
// nonroot user (65532), its home and /tmp; it runs as nonroot. Nothing
// in the image depends on when or where it is built, only on s and the
// binary's content. The binary is checked first: an ELF executable for
// s.Platform that needs no dynamic loader (a scratch image has none).
func Build(s Spec) (v1.Image, error) {
	bin, err := os.ReadFile(s.Binary)
	if err != nil {
		return nil, err
	}
	if err := checkExecutable(bin, s.Platform); err != nil {
		return nil, fmt.Errorf("%s: %w", s.Binary, err)
	}
	prog := filepath.Base(s.Binary)
	created := s.Created.UTC().Truncate(time.Second)

	layerTar, err := rootFS(prog, bin, created)
	if err != nil {
		return nil, fmt.Errorf("%s: layer: %w", s.Binary, err)
	}
	gz, err := compress(layerTar)
	if err != nil {
		return nil, fmt.Errorf("%s: layer: %w", s.Binary, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("%s: layer: %w", s.Binary, err)
	}

	// OCI media types throughout (manifest, config, layer), as the OCI
	// image layout written by writeArchive holds them: the digest of the
	// image built here is the digest a registry shows once it is pushed.
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: "mpfleet deploy/image: /usr/bin/" + prog + ", /etc/passwd, /etc/group",
		},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: created}
	cf.OS = s.Platform.OS
	cf.Architecture = s.Platform.Architecture
	cf.Variant = s.Platform.Variant
	cf.Config.Entrypoint = []string{"/usr/bin/" + prog}
	cf.Config.User = strconv.Itoa(nonrootID) + ":" + strconv.Itoa(nonrootID)
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{pathEnv}
	cf.Config.Labels = labels(prog, s, created)
	return mutate.ConfigFile(img, cf)
}

// labels are the image's org.opencontainers.image annotations.
func labels(prog string, s Spec, created time.Time) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":   prog,
		"org.opencontainers.image.created": created.Format(time.RFC3339),
	}
	for k, v := range map[string]string{"version": s.Version, "revision": s.Commit, "source": s.Source} {
		if v != "" {
			l["org.opencontainers.image."+k] = v
		}
	}
	return l
}

// rootFS returns the layer's tar archive: entries sorted by name, every
// time set to mtime, owners given by number (and name), nothing taken from
// the build machine but the binary's content.
func rootFS(prog string, bin []byte, mtime time.Time) ([]byte, error) {
	id := strconv.Itoa(nonrootID)
	passwd := "root:x:0:0:root:/root:/sbin/nologin\n" +
		nonrootName + ":x:" + id + ":" + id + ":" + nonrootName + ":/home/" + nonrootName + ":/sbin/nologin\n"
	group := "root:x:0:\n" + nonrootName + ":x:" + id + ":\n"
	type entry struct {
		name     string
		mode     int64
		uid, gid int
		data     []byte // nil: a directory
	}
	entries := []entry{
		{name: "etc/", mode: 0o755},
		{name: "etc/group", mode: 0o644, data: []byte(group)},
		{name: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{name: "home/", mode: 0o755},
		{name: "home/" + nonrootName + "/", mode: 0o700, uid: nonrootID, gid: nonrootID},
		{name: "tmp/", mode: 0o1777},
		{name: "usr/", mode: 0o755},
		{name: "usr/bin/", mode: 0o755},
		{name: "usr/bin/" + prog, mode: 0o755, data: bin},
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })

	owner := func(id int) string {
		if id == nonrootID {
			return nonrootName
		}
		return "root"
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    e.name,
			Mode:    e.mode,
			Uid:     e.uid,
			Gid:     e.gid,
			Uname:   owner(e.uid),
			Gname:   owner(e.gid),
			ModTime: mtime,
			Format:  tar.FormatUSTAR,
		}
		if e.data == nil {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("%s: %w", e.name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("%s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// compress gzips b with a header that carries no name and no time.
func compress(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// elfMachines are the ELF machines of the architectures Go builds Linux
// executables for.
var elfMachines = map[string]elf.Machine{
	"386":      elf.EM_386,
	"amd64":    elf.EM_X86_64,
	"arm":      elf.EM_ARM,
	"arm64":    elf.EM_AARCH64,
	"loong64":  elf.EM_LOONGARCH,
	"mips":     elf.EM_MIPS,
	"mipsle":   elf.EM_MIPS,
	"mips64":   elf.EM_MIPS,
	"mips64le": elf.EM_MIPS,
	"ppc64":    elf.EM_PPC64,
	"ppc64le":  elf.EM_PPC64,
	"riscv64":  elf.EM_RISCV,
	"s390x":    elf.EM_S390,
}

// checkExecutable says why bin cannot be the entrypoint of a scratch image
// for p: not an ELF executable, built for another architecture, or linked
// against a dynamic loader (cgo, or -buildmode=pie).
func checkExecutable(bin []byte, p v1.Platform) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	// f reads from memory: closing it cannot fail.
	defer func() { _ = f.Close() }()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("not an executable (ELF type %v)", f.Type)
	}
	want, ok := elfMachines[p.Architecture]
	if !ok {
		return fmt.Errorf("no ELF machine known for architecture %q", p.Architecture)
	}
	if f.Machine != want {
		return fmt.Errorf("built for %v, not for the image's architecture %s (%v): build with GOARCH=%s",
			f.Machine, p.Architecture, want, p.Architecture)
	}
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		interp, _ := io.ReadAll(io.LimitReader(prog.Open(), 256))
		return fmt.Errorf("not statically linked: needs the dynamic loader %s, which an image from scratch lacks: build with CGO_ENABLED=0 and without -buildmode=pie",
			bytes.TrimRight(interp, "\x00"))
	}
	return nil
}
