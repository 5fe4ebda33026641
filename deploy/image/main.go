// Command image builds the container images of mpfleet's programs without a
// Docker engine: for each static Linux binary given, an image from scratch
// holding it at /usr/bin/<name>, with OCI media types, written as an OCI
// image layout packed in one tar, <out>/<name>.oci.tar, that `skopeo copy
// oci-archive:`, `podman load`, `docker load`, `ctr images import` and
// (unpacked into a directory) `crane push` read. `make images` runs it:
//
//	go run ./deploy/image --out dist/images --version v1.2.3 \
//	  --commit $(git rev-parse HEAD) --date 2026-01-02T03:04:05Z \
//	  dist/images/bin/mpfleet-controller dist/images/bin/mpfleet-agent dist/images/bin/mpfleetctl
//
// The same binaries and flags give the same image digests and the same
// archives, byte for byte.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "image:", err)
		}
		os.Exit(2)
	}
}
