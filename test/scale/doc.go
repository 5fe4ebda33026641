// Package scale holds mpfleet's scale benchmark (issue #12): the real
// controller binary on an etcd process, thousands of simulated agents in
// separate mpfleet-loadgen processes (package test/loadgen), and the
// do-it-yourself baseline — every agent holding its own etcd watch —
// measured side by side in one run. It is a benchmark only, skipped unless
// given a fleet size:
//
//	make build
//	go test -run '^$' -bench Scale -benchtime 1x -timeout 60m ./test/scale -args -agents 1000
//
// or `make bench-scale SCALE_AGENTS=1000`. docs/scaling.md has the figures and
// what each one measures.
package scale
