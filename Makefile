# mpfleet — `make help` lists the targets.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO        ?= go
TOOLS     := $(CURDIR)/.tools/bin
BIN       := $(CURDIR)/bin
CACHE     := $(CURDIR)/.cache
export PATH := $(TOOLS):$(PATH)

# Pinned tool versions, installed from the Go module proxy into .tools/bin.
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
BUF_VERSION                := v1.75.0
GRPCURL_VERSION            := v1.9.4
GOLANGCI_LINT_VERSION      := v2.15.0

# Debian packages the tests and the lab need (ip, tc, sysctl).
APT_PACKAGES := iproute2 procps
# Debian packages only `make bench` needs, besides those: mptcpd, which the
# hotplug benchmark runs side by side with the agent.
BENCH_APT_PACKAGES := mptcpd mptcpd-plugins

PKGS := ./...
TEST_TIMEOUT ?= 15m

.PHONY: help
help: ## show this help
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z0-9_-]+:.*?## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# ---------------------------------------------------------------- tools

$(TOOLS)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION):
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@touch $@
$(TOOLS)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION):
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@touch $@
$(TOOLS)/.buf-$(BUF_VERSION):
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	@touch $@
$(TOOLS)/.grpcurl-$(GRPCURL_VERSION):
	GOBIN=$(TOOLS) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
	@touch $@
$(TOOLS)/.golangci-lint-$(GOLANGCI_LINT_VERSION):
	GOBIN=$(TOOLS) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	@touch $@
# A real etcd server binary for the external-etcd tests, built from the
# go.etcd.io/etcd/server/v3 version go.mod pins (a `tool` directive there
# keeps its dependencies through `go mod tidy`).
$(TOOLS)/etcd: go.mod go.sum
	@mkdir -p $(TOOLS)
	$(GO) build -o $@ go.etcd.io/etcd/server/v3

PROTO_TOOLS := $(TOOLS)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION) \
	$(TOOLS)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION) $(TOOLS)/.buf-$(BUF_VERSION)
TEST_TOOLS := $(PROTO_TOOLS) $(TOOLS)/.grpcurl-$(GRPCURL_VERSION) $(TOOLS)/etcd

.PHONY: tools
tools: $(TEST_TOOLS) $(TOOLS)/.golangci-lint-$(GOLANGCI_LINT_VERSION) ## install pinned tools into .tools/bin

.PHONY: deps
deps: ## install Debian packages the tests need (as root, with apt-get)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "deps: need root to install:$$missing" >&2; exit 1; fi; \
		echo "deps: installing$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(GO) mod download

# ---------------------------------------------------------------- build

# What --version says, from git (internal/version): the release (git
# describe), the commit, and the commit's time as the build date, so that a
# build is reproducible. LDFLAGS adds to the linker flags (make package: -s -w).
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null)
COMMIT      ?= $(shell git rev-parse HEAD 2>/dev/null)
BUILD_DATE  ?= $(shell TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null)
VERSION_PKG := github.com/mpfleet/mpfleet/internal/version
LDFLAGS     ?=
BUILD_LDFLAGS = $(LDFLAGS) -X $(VERSION_PKG).Version=$(VERSION) -X $(VERSION_PKG).Commit=$(COMMIT) -X $(VERSION_PKG).Date=$(BUILD_DATE)

.PHONY: build
build: ## build bin/mpfleet-controller, bin/mpfleet-agent, bin/mpfleetctl, stamped with the git version
	@mkdir -p $(BIN)
	@for d in $(wildcard controller/cmd/* agent/cmd/* cli/cmd/*); do \
		echo "go build -o bin/$$(basename $$d) ./$$d ($(VERSION))"; \
		$(GO) build -ldflags '$(BUILD_LDFLAGS)' -o $(BIN)/$$(basename $$d) ./$$d || exit 1; done

.PHONY: proto
proto: $(PROTO_TOOLS) ## regenerate Go code from proto/
	buf format -w
	buf generate

.PHONY: check-proto
check-proto: $(PROTO_TOOLS) ## fail if proto/ is unformatted, unlinted or its generated code stale
	buf format --diff --exit-code
	buf lint
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	buf generate -o $$tmp; \
	for f in $$(cd $$tmp && find . -name '*.go'); do \
		cmp -s $$tmp/$$f $$f || { echo "check-proto: $$f is stale; run 'make proto'" >&2; exit 1; }; \
	done; \
	for f in $$(find proto -name '*.pb.go'); do \
		[ -f $$tmp/$$f ] || { echo "check-proto: $$f has no .proto; remove it" >&2; exit 1; }; \
	done

# ---------------------------------------------------------------- checks

.PHONY: fmt
fmt: ## gofmt the tree
	gofmt -w $$(git ls-files '*.go' | grep -v '\.pb\.go$$')

.PHONY: check-fmt
check-fmt:
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

.PHONY: vet
vet:
	$(GO) vet $(PKGS)

.PHONY: lint
lint: $(TOOLS)/.golangci-lint-$(GOLANGCI_LINT_VERSION) check-fmt vet check-proto ## gofmt, go vet, golangci-lint, buf lint
	golangci-lint run $(PKGS)

# ---------------------------------------------------------------- tests

# Every test runs with -race. Tests needing root or a kernel feature skip
# elsewhere; with CI=true a skip is a failure (checked here and in the tests).
# The lab packages (test/lab, test/e2e) run after the rest, one at a time:
# their throughput and stall figures must not share the CPU with other tests.
.PHONY: test
test: deps tools lint ## install what is needed, run all checks and every test (root for the kernel tests)
	@mkdir -p $(CACHE)
	@status=0; \
	( a=0; b=0; \
	  $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -v $$($(GO) list $(PKGS) | grep -v -e '/test/lab' -e '/test/e2e') || a=$$?; \
	  $(GO) test -race -count=1 -p 1 -timeout $(TEST_TIMEOUT) -v ./test/lab/... ./test/e2e/... || b=$$?; \
	  exit $$(( a | b )) ) 2>&1 | tee $(CACHE)/test.log | \
		{ grep -E '^(--- (FAIL|SKIP)|FAIL|ok|panic:|\s+\S+_test\.go:[0-9]+:)' || true; } || status=$$?; \
	skips=$$(grep -cE '^\s*--- SKIP' $(CACHE)/test.log || true); \
	fails=$$(grep -cE '^\s*--- FAIL|^FAIL' $(CACHE)/test.log || true); \
	echo "test: $$(grep -cE '^\s*--- PASS' $(CACHE)/test.log || true) passed, $$skips skipped, $$fails failed (full log: .cache/test.log)"; \
	if [ "$$status" != 0 ] || [ "$$fails" != 0 ]; then echo "test: FAILED (go test exit status $$status)"; exit 1; fi; \
	if [ "$${CI:-}" = true ] && [ "$$skips" != 0 ]; then \
		echo "test: CI=true forbids skipped tests:"; grep -E '^\s*--- SKIP' -A1 $(CACHE)/test.log; exit 1; fi

.PHONY: test-short
test-short: ## unit tests only, no root needed
	$(GO) test -race -short $(PKGS)

.PHONY: bench
bench: ## run the benchmarks (root for the kernel ones; installs mptcpd for the hotplug one)
	-@$(MAKE) --no-print-directory deps APT_PACKAGES="$(APT_PACKAGES) $(BENCH_APT_PACKAGES)"
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

# ---------------------------------------------------------------- lab and demo

.PHONY: lab-up
lab-up: ## build the network lab (namespaces prefixed mpfl)
	$(GO) run ./test/lab/cmd/mpfleet-lab up

.PHONY: lab-down
lab-down: ## remove the network lab that lab-up built (prefix mpfl), and only it
	$(GO) run ./test/lab/cmd/mpfleet-lab down

.PHONY: lab-clean
lab-clean: ## remove every lab's leftovers (mpf*: lab-up's, the demo's, crashed tests')
	$(GO) run ./test/lab/cmd/mpfleet-lab cleanup

.PHONY: demo
demo: build ## the lab, controller and agents over mTLS, a policy applied with mpfleetctl, one MPTCP connection over two links (root)
	./test/demo.sh

.PHONY: clean
clean: ## remove build output and caches (not tools)
	rm -rf $(BIN) $(CACHE)

# ---------------------------------------------------------------- scale

SCALE_AGENTS   ?= 1000
SCALE_LOADGENS ?= 1
SCALE_CHANGES  ?= 20
SCALE_ARGS     ?=

.PHONY: bench-scale
bench-scale: build $(TOOLS)/etcd ## scale benchmark, hub vs every agent watching etcd (SCALE_AGENTS=1000 SCALE_LOADGENS=1 SCALE_CHANGES=20 SCALE_ARGS=...)
	$(GO) build -o $(BIN)/mpfleet-loadgen ./test/loadgen/cmd/mpfleet-loadgen
	$(GO) test -run '^$$' -bench Scale -benchtime 1x -timeout 180m ./test/scale -args \
		-agents $(SCALE_AGENTS) -loadgens $(SCALE_LOADGENS) -changes $(SCALE_CHANGES) \
		-loadgen-bin $(BIN)/mpfleet-loadgen $(SCALE_ARGS)

# ---------------------------------------------------------------- packages

NFPM_VERSION    := v2.45.2
DIST            := $(CURDIR)/dist
PACKAGE_VERSION ?= $(shell deploy/packaging/version.sh)
# Release builds: position-independent (ASLR; lintian calls a Go binary
# without it "statically linked", an error), no shared libraries (no libc
# dependency), no local paths, stripped (LDFLAGS, which build adds to its version stamps:
# -ldflags in GOFLAGS would be overridden by build's own).
PACKAGE_GOFLAGS := -trimpath -buildmode=pie
APT_PACKAGES    += lintian

$(TOOLS)/.nfpm-$(NFPM_VERSION):
	GOBIN=$(TOOLS) $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)
	@touch $@
# make test needs nfpm for the package tests.
tools: $(TOOLS)/.nfpm-$(NFPM_VERSION)

.PHONY: package
package: $(TOOLS)/.nfpm-$(NFPM_VERSION) ## build .deb packages of the controller, agent and mpfleetctl into dist/, and lintian them
	@[ -n "$(PACKAGE_VERSION)" ] || { echo "package: no version (PACKAGE_VERSION=...)" >&2; exit 1; }
	CGO_ENABLED=0 GOFLAGS="$(PACKAGE_GOFLAGS)" $(MAKE) --no-print-directory build BIN=$(DIST)/bin LDFLAGS='-s -w'
	@version='$(PACKAGE_VERSION)'; \
	echo "deploy/packaging/build.sh $(DIST)/bin $(DIST) $$version"; \
	debs=$$(NFPM=$(TOOLS)/nfpm deploy/packaging/build.sh $(DIST)/bin $(DIST) "$$version"); \
	echo "$$debs"; \
	if ! command -v lintian >/dev/null; then \
		if [ "$$(id -u)" != 0 ]; then echo "package: lintian is not installed (apt-get install lintian): packages not checked" >&2; exit 0; fi; \
		echo "package: installing lintian"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lintian; \
	fi; \
	echo "lintian --fail-on error,warning" $$debs; \
	lintian --fail-on error,warning $$debs
# make test builds and lints the packages before the tests run: the package
# test (deploy/) then only links again, its compiled code in the build cache.
test: package

# ---------------------------------------------------------------- images

# Container images from scratch, built without a Docker engine by
# deploy/image (go-containerregistry): one OCI image layout archive per
# program, dist/images/<program>.oci.tar, tagged $(IMAGE_REPO)/<program>:$(VERSION)
# (skopeo copy oci-archive:, podman load, docker load, ctr images import; see
# docs/operations.md "Container images"). The binaries are static
# (CGO_ENABLED=0, and not -buildmode=pie: a scratch image has no dynamic
# loader), -trimpath and stripped: the same sources give the same digest and
# the same archive, byte for byte.
IMAGES         := $(DIST)/images
IMAGE_REPO     ?= ghcr.io/mpfleet
IMAGE_PLATFORM ?= linux/$(shell $(GO) env GOARCH)
IMAGE_PROGRAMS := mpfleet-controller mpfleet-agent mpfleetctl

.PHONY: images
images: ## build OCI images of the controller, agent and mpfleetctl as dist/images/<program>.oci.tar (no Docker needed; IMAGE_PLATFORM=linux/arm64)
	@[ -n "$(VERSION)" ] || { echo "images: no version (VERSION=...)" >&2; exit 1; }
	CGO_ENABLED=0 GOOS=$(word 1,$(subst /, ,$(IMAGE_PLATFORM))) GOARCH=$(word 2,$(subst /, ,$(IMAGE_PLATFORM))) GOFLAGS=-trimpath \
		$(MAKE) --no-print-directory build BIN=$(IMAGES)/bin LDFLAGS='-s -w' \
		VERSION='$(VERSION)' COMMIT='$(COMMIT)' BUILD_DATE='$(BUILD_DATE)'
	$(GO) run ./deploy/image --out $(IMAGES) --repository $(IMAGE_REPO) --platform $(IMAGE_PLATFORM) \
		--version '$(VERSION)' --commit '$(COMMIT)' --date '$(BUILD_DATE)' \
		$(addprefix $(IMAGES)/bin/,$(IMAGE_PROGRAMS))
