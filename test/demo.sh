#!/usr/bin/env bash
# make demo: start a controller on embedded etcd and drive it with mpfleetctl.
# Everything it starts runs on loopback and is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/bin
work=$(mktemp -d /tmp/mpfleet-demo.XXXXXX)
port=${MPFLEET_DEMO_PORT:-17400}
export MPFLEET_CONTROLLER=127.0.0.1:$port
ctl_pid=
cleanup() {
	[ -n "$ctl_pid" ] && kill "$ctl_pid" 2>/dev/null && wait "$ctl_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "Start the controller (embedded etcd in $work)"
"$BIN/mpfleet-controller" --listen "127.0.0.1:$port" --data-dir "$work/data" \
	--etcd-client-url "http://127.0.0.1:$((port + 1))" --etcd-peer-url "http://127.0.0.1:$((port + 2))" \
	--log-level warn &
ctl_pid=$!
for _ in $(seq 100); do "$BIN/mpfleetctl" get groups >/dev/null 2>&1 && break; sleep 0.1; done

say "Apply a policy: every role=mptcp-host uses its eth* links as MPTCP subflows"
run "$BIN/mpfleetctl" apply -f deploy/examples/two-links.yaml --reason "two uplinks"
run "$BIN/mpfleetctl" apply -f deploy/examples/two-links.yaml
run "$BIN/mpfleetctl" get groups

say "Change it: allow 4 subflows (a new immutable revision)"
sed 's/subflows: 2 /subflows: 4 /' deploy/examples/two-links.yaml > "$work/four.yaml"
run "$BIN/mpfleetctl" apply -f "$work/four.yaml" --reason "more subflows"
run "$BIN/mpfleetctl" revisions lab
run "$BIN/mpfleetctl" diff lab 1 2

say "Bad input is refused, naming the field, and changes nothing"
sed 's/subflows: 2 /subflows: 12 /' deploy/examples/two-links.yaml > "$work/bad.yaml"
printf '$ mpfleetctl apply -f bad.yaml\n'
"$BIN/mpfleetctl" apply -f "$work/bad.yaml" || true

say "Who changed what: the hash-chained audit log"
run "$BIN/mpfleetctl" audit list
run "$BIN/mpfleetctl" audit verify
say "Done; cleaning up"
