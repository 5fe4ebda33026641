#!/usr/bin/env bash
# make demo: the network lab, the real controller and agents over (mutual)
# TLS, the lab's policy set applied with mpfleetctl, and one Multipath TCP
# connection over two links: aggregation, a link pulled mid-transfer, the
# link coming back. Narrated; everything it makes is removed on exit, on
# failure and on Ctrl-C. Needs root and `make build` (the Makefile's demo
# target does both). The driver is test/demo, on the fleet harness of
# test/fleettest that the end-to-end tests use too.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "demo: needs root (network namespaces): sudo make demo" >&2
	exit 1
fi
# Compile first, then run: Ctrl-C reaches the demo itself, which cleans up.
tmp=$(mktemp -d /tmp/mpfleet-demo-bin.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/demo" ./test/demo
"$tmp/demo" --bin "${MPFLEET_BIN:-bin}" "$@"
