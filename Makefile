# trafficlab: `make demo` and `make test` are the two set-up commands (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

VERSION ?= $(shell hack/version.sh)
PKG := github.com/trafficlab/kubectl-trafficlab
OUT := _output
BIN := $(CURDIR)/$(OUT)/bin
# Build caches, cluster binaries and tools live outside the clone so a second run is fast.
export TRAFFICLAB_CACHE ?= /var/cache/trafficlab
export CGO_ENABLED := 0

PLUGIN_LDFLAGS := -s -w -X $(PKG)/pkg/version.version=$(VERSION)
AGENT_LDFLAGS := -s -w -X main.version=$(VERSION)
AGENT_ARCHES := amd64 arm64
GO_TEST_FLAGS ?= -count=1
# Unit and kernel tests run under the race detector, which needs cgo: CGO_ENABLED=1 is given to the
# test builds only (the binaries above stay static). netgo,osusergo keep name resolution and user
# lookup Go's own, as in the static binaries. RACE= runs them without it.
RACE ?= -race
export TEST_TAGS := netgo,osusergo
TEST_ENV := CGO_ENABLED=1

.PHONY: build agent agent-image test test-unit test-kernel e2e cluster-up cluster-down demo lint verify dist bench clean help

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## build kubectl-trafficlab and its completion helper into _output/bin
	go build -trimpath -ldflags '$(PLUGIN_LDFLAGS)' -o $(BIN)/ ./cmd/kubectl-trafficlab ./cmd/kubectl_complete-trafficlab

agent: ## build the static agent for every image platform
	for arch in $(AGENT_ARCHES); do \
	  GOOS=linux GOARCH=$$arch go build -trimpath -ldflags '$(AGENT_LDFLAGS)' -o $(OUT)/agent/linux_$$arch/trafficlab-agent ./ephemeral/agent; \
	done

# The image's user and group are the non-root agent's UID, read from its one definition (inject.NonRootUID), so
# that an agent started from the image without the plugin's securityContext runs as that user too.
AGENT_UID = $(or $(shell sed -n 's/^const NonRootUID int64 = \([0-9][0-9]*\)$$/\1/p' pkg/agent/inject/spec.go),$(error no "const NonRootUID int64 = N" line in pkg/agent/inject/spec.go))

# The tag comes from the plugin itself, so the image is always the one the plugin will ask for. The
# index digest goes to agent.digest, which make dist links into the released plugin; PUSH=1 (the
# release workflow) also pushes that same index to the registry of the tag.
agent-image: build agent ## build the multi-platform agent image tarball into _output/images (PUSH=1: and push it)
	mkdir -p $(OUT)/images
	go run ./hack/mkimage -tag "$$(env -u TRAFFICLAB_AGENT_IMAGE $(BIN)/kubectl-trafficlab version -o json | sed -n 's/.*"agentImage": "\(.*\)".*/\1/p')" \
	  $(foreach a,$(AGENT_ARCHES),-platform linux/$(a)=$(OUT)/agent/linux_$(a)) \
	  -entrypoint /trafficlab-agent -user $(AGENT_UID):$(AGENT_UID) -out $(OUT)/images/agent.tar \
	  -digest-file $(OUT)/images/agent.digest $(if $(PUSH),-push)

test: test-unit test-kernel e2e ## every test level: unit, kernel, end to end on the local cluster

test-unit: ## unit tests under the race detector (kernel and e2e tests have build tags of their own)
	$(TEST_ENV) hack/gotest.sh unit $(RACE) -tags $(TEST_TAGS) $(GO_TEST_FLAGS) ./...

test-kernel: ## kernel tests (build tag kernel) under the race detector, in network namespaces they create (root)
	$(TEST_ENV) hack/test-kernel.sh $(RACE) $(GO_TEST_FLAGS)

# The e2e runs a race-detector build of the plugin (the agent in the image stays static); a race it
# reports, even in a plugin the tests kill, fails the run (hack/e2e.sh reads GORACE's log files).
# Only that build is on PATH: kubectl plugin list fails on a plugin shadowed by another. It is built
# as the unit tests are (no -trimpath), so it reuses their compiled race-detector packages.
# E2E_ARGS go to go test, e.g. E2E_ARGS='-run TestSteal'.
# TestKrewInstall installs this tree's snapshot release (make dist) with krew: the full run, and any
# whose E2E_ARGS name Krew, make dist first (about a minute); narrower runs skip it.
E2E_DIST := $(if $(E2E_ARGS),$(if $(findstring Krew,$(E2E_ARGS)),dist),dist)
e2e: agent-image $(E2E_DIST) ## end-to-end tests on the local cluster (started and stopped if it was not up)
	$(TEST_ENV) go build $(RACE) -tags $(TEST_TAGS) -ldflags '$(PLUGIN_LDFLAGS)' -o $(OUT)/race/bin/ ./cmd/kubectl-trafficlab ./cmd/kubectl_complete-trafficlab
	grpcurl="$$(hack/tools/install.sh grpcurl)" && PATH="$(CURDIR)/$(OUT)/race/bin:$$(dirname "$$grpcurl"):$$PATH" \
	  TRAFFICLAB_RACE_LOG="$(CURDIR)/$(OUT)/race/log" hack/e2e.sh $(E2E_ARGS)

cluster-up: agent-image ## start the local single-node cluster (builds and caches what it needs)
	hack/cluster/up.sh

cluster-down: ## stop the local cluster and remove everything it made on the host
	hack/cluster/down.sh

demo: cluster-up ## build, start the cluster, find the plugin through kubectl, forward to a demo Service, then steal it
	hack/demo.sh

lint: ## golangci-lint (pinned in hack/tools), with the import rules of ephemeral/ and capture/
	hack/lint.sh

dist: agent-image ## goreleaser snapshot (archives, checksums, SBOMs; plugin pinned to the agent index digest) and the rendered krew manifest in dist/
	hack/dist.sh $(VERSION)

verify: dist ## goreleaser config and snapshot, krew manifest, workflows (actionlint), go install path, cosign sign+verify of the snapshot agent image, docs map, gofmt, go vet
	hack/verify.sh

clean: ## remove build outputs (not the caches)
	rm -rf $(OUT) dist

bench: build agent-image ## trafficlab port-forward and steal vs kubectl port-forward on the local cluster, also through a laptop link; tables in _output/bench.md
	hack/cluster/up.sh
	vegeta="$$(hack/tools/install.sh vegeta)" && toxiproxy="$$(hack/tools/install.sh toxiproxy-server)" && \
	  source hack/cluster/env.sh && export PATH="$(BIN):$$PATH" && eval "$$(hack/cluster/images.sh)" && \
	  go run ./hack/bench --image "$$TRAFFICLAB_PEERS_IMAGE" --vegeta "$$vegeta" --toxiproxy "$$toxiproxy" --out $(OUT)/bench.md $(BENCH_FLAGS)

.PHONY: fuzz
fuzz: ## every fuzz target for FUZZTIME each (default 60s); crashers land in testdata/fuzz to commit with the fix
	hack/fuzz.sh $(if $(FUZZTIME),--time $(FUZZTIME))
