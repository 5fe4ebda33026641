#!/usr/bin/env bash
# fleet-health.sh HOST — list the fleet's hosts and print the MPTCP health of
# one, with grpcurl alone: the controller serves reflection, so no .proto
# files are needed. test/e2e runs it against the lab controller.
#
#   CONTROLLER=198.18.100.1:7400 CACERT=ca.pem TOKEN=... fleet-health.sh hosts/web-1
#
# CONTROLLER  host:port of the controller
# CACERT      CA bundle that verifies its certificate (TLS)
# TOKEN       bearer token (any role: reading needs viewer)
# GRPCURL     the grpcurl binary (default: grpcurl on PATH)
set -euo pipefail
host=${1:?usage: fleet-health.sh hosts/NAME}
: "${CONTROLLER:?set CONTROLLER=host:port}" "${CACERT:?set CACERT}" "${TOKEN:?set TOKEN}"
grpcurl=${GRPCURL:-grpcurl}
call() { "$grpcurl" -cacert "$CACERT" -H "authorization: Bearer $TOKEN" "$@"; }

echo "== hosts"
# Each host's resource name, one per line: "hosts/NAME".
call -d '{"page_size": 1000}' "$CONTROLLER" mpfleet.v1.HostService/ListHosts |
	grep -o '"name": "hosts/[^"]*"' | cut -d'"' -f4

echo "== health of $host"
# The host's MptcpHealth, as JSON: connections, subflows, fallbacks, counters.
call -d "{\"name\": \"$host\"}" "$CONTROLLER" mpfleet.v1.HostService/GetHost |
	sed -n '/^  "health": {/,/^  }/p' | sed -e '1s/^  "health": //' -e 's/^  //' -e '$s/},$/}/'
