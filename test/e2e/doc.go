// Package e2e holds mpfleet's end-to-end tests: the real mpfleet-controller,
// mpfleet-agent and mpfleetctl binaries, built once per run, in the network
// lab of package github.com/mpfleet/mpfleet/test/lab, secured as in
// production (mutual TLS for agents, TLS and a bearer token for mpfleetctl
// and grpcurl, with a throwaway CA). The fleet harness (PKI, processes,
// mpfleetctl, waits) is package github.com/mpfleet/mpfleet/test/fleettest,
// which the demo (test/demo) runs on too.
//
// Every test builds its own lab with a unique prefix and removes it, with
// every process it started, when it ends, also on failure. They need root;
// they skip elsewhere (and under -short) and fail when CI=true. Kernel state
// is read from the namespaces themselves (internal/mptcp, internal/route),
// never taken from what the agents report.
//
//	go test -v -count=1 ./test/e2e/
//
// The figures in docs/performance.md come from these tests' logs.
package e2e
