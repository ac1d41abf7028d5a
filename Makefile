SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

BUF := go tool -modfile=.ci/tools/go.mod buf
GOLANGCI_LINT := go tool -modfile=.ci/tools/go.mod golangci-lint

.PHONY: help
help: ## show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: generate
generate: ## regenerate gen/ from proto/ with local plugins
	go build -o /dev/null tool
	$(BUF) generate

.PHONY: check-generate
check-generate: generate ## fail when gen/ is not what proto/ generates
	@git diff --exit-code -- gen/ && test -z "$$(git status --porcelain -- gen/)" || { echo "gen/ is stale: run make generate and commit" >&2; exit 1; }

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: build
# agentd is built static and without grpc-go's tracing: its whole executable
# stays resident, so its size is most of agentd's RSS (README, Performance).
build: ## build bin/agentplane-server, bin/agentplane-agentd and bin/agentplanectl
	go build -ldflags "$(LDFLAGS)" -o bin/agentplane-server ./server/cmd/agentplane-server
	go build -ldflags "$(LDFLAGS)" -o bin/agentplanectl ./server/cmd/agentplanectl
	CGO_ENABLED=0 go build -tags grpcnotrace -ldflags "$(LDFLAGS)" -o bin/agentplane-agentd ./agentd/cmd/agentplane-agentd

# make package: the packages' version is VERSION without its leading v, its
# first - a + and the others dots (v1.2.3-4-gabc1234-dirty: 1.2.3+4.gabc1234.dirty);
# without a tag, 0.0.0~git.<commit>, which sorts before any release.
PKG_VERSION ?= $(shell printf '%s\n' '$(VERSION)' | sed -E 's/^v//; /^[0-9]+\.[0-9]+/!s/^/0.0.0~git./; s/-/+/; s/-/./g')
PKG_ARCH ?= $(shell go env GOARCH)
# nfpm configs, one a package; their paths are relative to the repository's root.
NFPM_CONFIGS := server/packaging/agentplane-server.yaml agentd/packaging/agentplane-agentd.yaml server/packaging/agentplanectl.yaml

.PHONY: package
# Every binary static (no libc to match on the target), agentd as make build
# builds it; dist/bin holds what the packages ship.
package: ## build .deb and .rpm packages of the server, agentd and the CLI into dist/ (PKG_ARCH=arm64 for another)
	rm -rf dist && mkdir -p dist/bin
	CGO_ENABLED=0 GOARCH=$(PKG_ARCH) go build -trimpath -ldflags "$(LDFLAGS)" -o dist/bin/agentplane-server ./server/cmd/agentplane-server
	CGO_ENABLED=0 GOARCH=$(PKG_ARCH) go build -trimpath -ldflags "$(LDFLAGS)" -o dist/bin/agentplanectl ./server/cmd/agentplanectl
	CGO_ENABLED=0 GOARCH=$(PKG_ARCH) go build -trimpath -tags grpcnotrace -ldflags "$(LDFLAGS)" -o dist/bin/agentplane-agentd ./agentd/cmd/agentplane-agentd
	go build -modfile=.ci/tools/go.mod -o dist/nfpm github.com/goreleaser/nfpm/v2/cmd/nfpm
	for cfg in $(NFPM_CONFIGS); do for fmt in deb rpm; do \
		PKG_VERSION='$(PKG_VERSION)' PKG_ARCH='$(PKG_ARCH)' dist/nfpm package -f "$$cfg" -p "$$fmt" -t dist/ || exit 1; \
	done; done
	@echo "version $(VERSION), packages $(PKG_VERSION):"; ls -l dist/*.deb dist/*.rpm

# For .ci/check-packages: the version the packages get.
.PHONY: package-version
package-version:
	@echo '$(PKG_VERSION)'

.PHONY: tools
# The pinned grpcurl of the tools module (.ci/tools/go.mod), built ahead:
# its first build downloads and compiles it, minutes on a cold cache.
tools: ## build bin/grpcurl, the pinned grpcurl of the tools module, for the README's examples
	go build -modfile=.ci/tools/go.mod -o bin/grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl

.PHONY: build-bench
build-bench: build ## build the benchmark tools: bin/agentplane-bench, bin/agentplane-sim, bin/fakeocpagent
	go build -ldflags "$(LDFLAGS)" -o bin/agentplane-bench ./agentd/cmd/agentplane-bench
	go build -ldflags "$(LDFLAGS)" -o bin/agentplane-sim ./agentd/cmd/agentplane-sim
	go build -o bin/fakeocpagent ./testdata/fakeocpagent

# OUT=FILE also writes the report as JSON; ONLY=a,b runs some scenarios.
BENCH_ARGS = -bin bin $(if $(OUT),-o $(OUT)) $(if $(ONLY),-only $(ONLY))

.PHONY: bench
bench: build-bench ## run every benchmark and print p50/p99/throughput/memory beside baselines and targets (OUT=report.json)
	bin/agentplane-bench $(BENCH_ARGS)

.PHONY: bench-short
bench-short: build-bench ## the benchmarks in short mode (smaller fleets, under 5 minutes)
	bin/agentplane-bench -short $(BENCH_ARGS)

.PHONY: test
test: ## run every test (unit and integration, with the real binaries), always with -race; then the store suite on MariaDB
	go test -race -count=1 -timeout 20m ./...
	$(MAKE) test-store-mysql

.PHONY: test-store-mysql
test-store-mysql: ## the store conformance suite on MariaDB (a private mariadbd; skipped without one unless AGENTPLANE_REQUIRE_MARIADB=1)
	AGENTPLANE_TEST_STORE=mysql go test -race -count=1 -timeout 10m ./server/internal/store/...

.PHONY: test-cluster
test-cluster: ## the cluster tests: three replicas on a private MariaDB, real agentds (skipped without mariadbd unless AGENTPLANE_REQUIRE_MARIADB=1)
	go test -race -count=1 -timeout 15m -run '^TestCluster' ./server/integration/

# Fuzz targets as package:Name; each has a seed corpus in its package's
# testdata/fuzz/<Name>/ (plus its f.Add seeds), which `make test` runs too.
FUZZ_TARGETS := ./server/internal/rest:FuzzHandler ./server/internal/auth:FuzzVerify ./server/internal/rpc:FuzzAgentMessage
FUZZTIME ?= 10s
# Minimizing each new interesting input may take 60s by default, which
# stalls a short run; a failing input is still minimized for this long.
FUZZMINIMIZETIME ?= 2s

.PHONY: fuzz
fuzz: ## run each fuzz target for FUZZTIME (default 10s), one after another; fails on the first failure
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzzing $$name in $$pkg for $(FUZZTIME)"; \
		go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg || exit 1; \
	done

.PHONY: lint
lint: ## go vet, gofmt, golangci-lint (.ci/golangci.yml), buf lint and buf format
	go vet ./... ./testdata/fakeocpagent
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GOLANGCI_LINT) run --config .ci/golangci.yml ./... ./testdata/fakeocpagent
	$(BUF) lint
	$(BUF) format -d --exit-code

RUN_DIR := $(CURDIR)/.run
GRPC_ADDR ?= 127.0.0.1:7070
HTTP_ADDR ?= 127.0.0.1:8080

# run and demo: Ctrl-C, or SIGINT/SIGTERM to the script's pid
# (.run/run-local.pid), stops everything; SIGTERM to make is passed on too
# (GNU make passes no SIGINT to its children: a terminal's Ctrl-C reaches
# them all). The agentd may end (try an outage): kill -USR1 <pid> starts it
# again. READY_TIMEOUT (60 s) bounds the wait for the server.
.PHONY: run
run: build ## run the server on the embedded store and an agentd for this machine (Ctrl-C stops both)
	@RUN_DIR=$(RUN_DIR) GRPC_ADDR=$(GRPC_ADDR) HTTP_ADDR=$(HTTP_ADDR) DEMO= bash .ci/run-local

.PHONY: demo
demo: build ## like run, plus a fake OCP Agent under .run/ocp_agent for the agentd to stop
	go build -o $(RUN_DIR)/ocp_agent/bin/ocp_agentd ./testdata/fakeocpagent
	@RUN_DIR=$(RUN_DIR) GRPC_ADDR=$(GRPC_ADDR) HTTP_ADDR=$(HTTP_ADDR) DEMO=1 bash .ci/run-local

# MARIADB_PORT (default: the first free one from 13306), GRPC_PORTS and
# HTTP_PORTS (three each) place the cluster; .run/cluster keeps its data.
.PHONY: demo-cluster
demo-cluster: build ## a private MariaDB, three replicas on it, the fake OCP Agent and an agentd knowing all three (Ctrl-C stops all)
	go build -o $(RUN_DIR)/cluster/ocp_agent/bin/ocp_agentd ./testdata/fakeocpagent
	@RUN_DIR=$(RUN_DIR)/cluster bash .ci/run-cluster

.PHONY: clean
clean: ## remove bin/, dist/ and .run/ (the local run's data)
	rm -rf bin dist .run
