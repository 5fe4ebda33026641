#!/usr/bin/env bash
# Builds the .deb packages mpfleet-controller, mpfleet-agent and mpfleetctl
# from the binaries in BIN into DIST, with nfpm (make package runs it after
# make build, then lintian). Run from anywhere; paths may be relative to the
# repository root.
#
#   build.sh BIN DIST [VERSION]
#
# VERSION defaults to version.sh's, from git. NFPM names the nfpm binary
# (default: nfpm on PATH); ARCH the Debian architecture (default: GOARCH's,
# as go env reports it).
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
	echo "usage: build.sh BIN DIST [VERSION]" >&2
	exit 2
fi
root=$(cd "$(dirname "$0")/../.." && pwd)
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
bin=$(abs "$1")
dist=$(abs "$2")
version=${3:-$("$root/deploy/packaging/version.sh")}
nfpm=${NFPM:-nfpm}

if [ -z "${ARCH:-}" ]; then
	goarch=${GOARCH:-$(go env GOARCH)}
	case $goarch in
	amd64 | arm64 | s390x | riscv64) ARCH=$goarch ;;
	386) ARCH=i386 ;;
	arm) ARCH=armhf ;;
	ppc64le) ARCH=ppc64el ;;
	*) echo "build.sh: no Debian architecture known for GOARCH $goarch; set ARCH" >&2; exit 1 ;;
	esac
fi

for b in mpfleet-controller mpfleet-agent mpfleetctl; do
	if [ ! -x "$bin/$b" ]; then
		echo "build.sh: $bin/$b is missing: run make build first" >&2
		exit 1
	fi
done

# Reproducible: every file's time is the commit's (or SOURCE_DATE_EPOCH).
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dist"
cd "$root"
for pkg in mpfleet-controller mpfleet-agent mpfleetctl; do
	# A native package's changelog: one entry, this build.
	mkdir -p "$tmp/$pkg"
	{
		echo "$pkg ($version) unstable; urgency=medium"
		echo
		echo "  * Built from git $(git describe --tags --always --dirty 2>/dev/null || echo "(unknown)")."
		echo "    Changes: https://github.com/mpfleet/mpfleet/commits/main"
		echo
		echo " -- mpfleet developers <mpfleet@users.noreply.github.com>  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
	} >"$tmp/$pkg/changelog"
	touch -d "@$SOURCE_DATE_EPOCH" "$tmp/$pkg/changelog"
	gzip -9n "$tmp/$pkg/changelog"
	VERSION=$version ARCH=$ARCH BIN=$bin DOC=$tmp/$pkg \
		"$nfpm" package --packager deb --config "deploy/packaging/$pkg.yaml" \
		--target "$dist/${pkg}_${version}_$ARCH.deb" >/dev/null
	echo "$dist/${pkg}_${version}_$ARCH.deb"
done
