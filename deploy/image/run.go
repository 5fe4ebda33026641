package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// run builds an image of each binary named in args and writes it as an
// OCI image layout archive <name>.oci.tar into --out, printing one line
// per image (file, reference, manifest digest) to stdout. Bad flags or
// binaries write nothing.
func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "dist/images", "directory to write <name>.oci.tar into")
	repo := fs.String("repository", "ghcr.io/mpfleet", "repository prefix: an image is <repository>/<name>:<version>")
	version := fs.String("version", "", "the image tag and version label (required; make images: git describe)")
	commit := fs.String("commit", "", "the revision label: the commit hash")
	date := fs.String("date", "", "the creation time, RFC 3339: the commit's time (default: $SOURCE_DATE_EPOCH, else 1970-01-01T00:00:00Z)")
	source := fs.String("source", "https://github.com/mpfleet/mpfleet", "the source label")
	platform := fs.String("platform", "linux/"+defaultArch(), "the image's platform, linux/<GOARCH>[/<variant>]; the binaries must be built for it")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: go run ./deploy/image [flags] BINARY...\n\n"+
			"Builds an image from scratch of each static Linux BINARY, written as an OCI image\n"+
			"layout archive to <out>/<name>.oci.tar; prints each file, reference and digest.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}

	if *version == "" {
		return errors.New("--version: required (the image tag; make images gives git describe)")
	}
	created, err := creationTime(*date)
	if err != nil {
		return err
	}
	plat, err := v1.ParsePlatform(*platform)
	if err != nil {
		return fmt.Errorf("--platform: %w", err)
	}
	if plat.OS != "linux" || plat.Architecture == "" || plat.OSVersion != "" {
		return fmt.Errorf("--platform: %q: want linux/<GOARCH>[/<variant>]", *platform)
	}
	if fs.NArg() == 0 {
		return errors.New("no binaries given: usage: go run ./deploy/image [flags] BINARY")
	}

	type image struct {
		tag  name.Tag
		file string
		img  v1.Image
	}
	tags := map[string]name.Tag{}
	seen := map[string]string{}
	for _, bin := range fs.Args() {
		prog := filepath.Base(bin)
		if other, ok := seen[prog]; ok {
			return fmt.Errorf("binaries %s and %s: both would be image %s", other, bin, prog)
		}
		seen[prog] = bin
		tag, err := name.NewTag(*repo+"/"+prog+":"+*version, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("--repository %q, --version %q: image name of %s: %w", *repo, *version, bin, err)
		}
		tags[bin] = tag
	}
	var images []image
	for _, bin := range fs.Args() {
		prog, tag := filepath.Base(bin), tags[bin]
		img, err := Build(Spec{
			Binary:   bin,
			Version:  *version,
			Commit:   *commit,
			Source:   *source,
			Created:  created,
			Platform: *plat,
		})
		if err != nil {
			return err
		}
		images = append(images, image{tag: tag, file: filepath.Join(*out, prog+archiveSuffix), img: img})
	}

	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	for _, im := range images {
		if err := writeArchiveFile(im.file, im.tag, im.img, created); err != nil {
			return fmt.Errorf("%s: %w", im.file, err)
		}
		digest, err := im.img.Digest()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\t%s@%s\n", im.file, im.tag, digest)
	}
	return nil
}

// creationTime parses --date; empty is $SOURCE_DATE_EPOCH (seconds), else
// the Unix epoch: never the time of the build.
func creationTime(date string) (time.Time, error) {
	if date != "" {
		t, err := time.Parse(time.RFC3339, date)
		if err != nil {
			return time.Time{}, fmt.Errorf("--date: %q is not an RFC 3339 time (2026-01-02T03:04:05Z)", date)
		}
		return t.UTC(), nil
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH: %q is not a number of seconds", s)
		}
		return time.Unix(sec, 0).UTC(), nil
	}
	return time.Unix(0, 0).UTC(), nil
}

// defaultArch is $GOARCH if set, else this program's architecture.
func defaultArch() string {
	if a := os.Getenv("GOARCH"); a != "" {
		return a
	}
	return runtime.GOARCH
}
