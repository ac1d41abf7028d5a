SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

BUF := go tool -modfile=.ci/tools/go.mod buf

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
build: ## build bin/agentplane-server and bin/agentplane-agentd
	go build -ldflags "$(LDFLAGS)" -o bin/agentplane-server ./server/cmd/agentplane-server
	go build -ldflags "$(LDFLAGS)" -o bin/agentplane-agentd ./agentd/cmd/agentplane-agentd
