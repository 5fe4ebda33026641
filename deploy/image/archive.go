package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The annotations on the image's descriptor in index.json.
const (
	// annotationRefName is the tag, as the OCI image layout names an
	// image (skopeo's oci-archive:FILE:TAG selects by it).
	annotationRefName = "org.opencontainers.image.ref.name"
	// annotationImageName is the full reference, which ctr images import,
	// docker load (containerd image store) and podman load name the
	// image by.
	annotationImageName = "io.containerd.image.name"
)

// ociLayout is the oci-layout file: the version of the image layout.
const ociLayout = `{"imageLayoutVersion":"1.0.0"}`

// archiveSuffix ends the name of an image's archive: <name>.oci.tar.
const archiveSuffix = ".oci.tar"

// archiveEntry is a file (or, with no content, a directory) in the archive.
type archiveEntry struct {
	name string
	size int64
	open func() (io.ReadCloser, error) // nil: a directory
}

// writeArchive writes img tagged tag to w as an OCI image layout in one tar
// archive: oci-layout, index.json naming the image's manifest (annotated
// with the tag and the reference), and blobs/sha256/ with the manifest,
// config and compressed layers. A manifest.json lists the same blobs for
// Docker's classic image store, as docker save has written it since
// Docker 25; it plays no part in the image's digest. The archive is the
// same bytes for the same image: entries sorted by name, every time
// mtime, owner 0:0, USTAR headers without PAX records.
func writeArchive(w io.Writer, tag name.Tag, img v1.Image, mtime time.Time) error {
	entries, err := layoutEntries(tag, img)
	if err != nil {
		return err
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	mtime = mtime.UTC().Truncate(time.Second)

	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := &tar.Header{
			Name:    e.name,
			ModTime: mtime,
			Format:  tar.FormatUSTAR,
		}
		if e.open == nil {
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		} else {
			h.Typeflag, h.Mode, h.Size = tar.TypeReg, 0o644, e.size
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", e.name, err)
		}
		if e.open == nil {
			continue
		}
		if err := copyEntry(tw, e); err != nil {
			return fmt.Errorf("%s: %w", e.name, err)
		}
	}
	return tw.Close()
}

// copyEntry copies e's content, which must be e.size bytes, to tw.
func copyEntry(tw *tar.Writer, e archiveEntry) error {
	rc, err := e.open()
	if err != nil {
		return err
	}
	n, err := io.Copy(tw, rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != e.size {
		err = fmt.Errorf("%d bytes, want %d", n, e.size)
	}
	return err
}

// layoutEntries are the files and directories of img's image layout.
func layoutEntries(tag name.Tag, img v1.Image) ([]archiveEntry, error) {
	manifest, err := img.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	desc, err := partial.Descriptor(img)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}

	blobs := map[v1.Hash]archiveEntry{}
	addBlob := func(h v1.Hash, size int64, open func() (io.ReadCloser, error)) {
		blobs[h] = archiveEntry{name: blobPath(h), size: size, open: open}
	}
	addBlob(desc.Digest, desc.Size, bytesOpener(manifest))
	addBlob(m.Config.Digest, m.Config.Size, bytesOpener(config))
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("layers: %w", err)
	}
	docker := dockerManifest{Config: blobPath(m.Config.Digest), RepoTags: []string{imageName(tag)}}
	for i, l := range layers {
		h, err := l.Digest()
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		size, err := l.Size()
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		addBlob(h, size, l.Compressed)
		docker.Layers = append(docker.Layers, blobPath(h))
	}

	entry := *desc // a copy: desc may be img's own
	entry.Platform = cf.Platform()
	entry.Annotations = map[string]string{
		annotationRefName:   tag.TagStr(),
		annotationImageName: imageName(tag),
	}
	index, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests:     []v1.Descriptor{entry},
	})
	if err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	dockerJSON, err := json.Marshal([]dockerManifest{docker})
	if err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}

	entries := []archiveEntry{
		{name: "blobs/"},
		{name: "blobs/sha256/"},
		fileEntry("oci-layout", []byte(ociLayout)),
		fileEntry("index.json", index),
		fileEntry("manifest.json", dockerJSON),
	}
	for _, e := range blobs {
		entries = append(entries, e)
	}
	return entries, nil
}

// dockerManifest is an image's entry in a docker-archive manifest.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// imageName is the full reference of tag, Docker Hub's spelt docker.io as
// containerd and Docker spell it.
func imageName(tag name.Tag) string {
	reg := tag.RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	return reg + "/" + tag.RepositoryStr() + ":" + tag.TagStr()
}

// blobPath is where the image layout keeps the blob h.
func blobPath(h v1.Hash) string {
	return path.Join("blobs", h.Algorithm, h.Hex)
}

// fileEntry is a file holding b.
func fileEntry(name string, b []byte) archiveEntry {
	return archiveEntry{name: name, size: int64(len(b)), open: bytesOpener(b)}
}

// bytesOpener opens a reader of b.
func bytesOpener(b []byte) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}

// writeArchiveFile writes img's archive (writeArchive) to file through a
// temporary file, so that a failure leaves no partial archive behind.
func writeArchiveFile(file string, tag name.Tag, img v1.Image, mtime time.Time) error {
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = writeArchive(f, tag, img, mtime)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, file)
	}
	if err != nil {
		_ = os.Remove(tmp) // best effort: err says what went wrong
	}
	return err
}
