# bottle. The one test command is `make test` as root (scripts/test.sh).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := /usr/local/go/bin:/usr/local/bin:$(PATH)

GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# Pinned: staticcheck 2026.2.2 supports Go 1.26.
STATICCHECK_VERSION ?= v0.8.2
GOBIN_DIR := $(shell d=$$($(GO) env GOBIN); [ -n "$$d" ] || d=$$($(GO) env GOPATH)/bin; echo $$d)
STATICCHECK := $(GOBIN_DIR)/staticcheck

.PHONY: all build run demo test lint fmt vet staticcheck tools setup clean bench-start bench-proxy bench-scale

all: build

# bottle and, next to it, the sidecars' own binary (each sidecar's sandbox runs it).
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/bottle ./cmd/bottle
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/bottle-sidecar ./cmd/bottle-sidecar

# The main job: Claude Code in a bottle on this directory (`sudo -E make run`, with
# CLAUDE_CODE_OAUTH_TOKEN exported; CMD="..." runs a command instead of claude). The
# bottle is kept (stopped) when claude exits, with its files, for `bottle resume ID`;
# `bottle rm ID` removes it (the exit prints both). CONTAINERD_ADDRESS: use that
# containerd instead of starting one.
run:
	scripts/run.sh $(CMD)

# A busybox shell in a bottle (no agent image or token needed), removed when the shell
# exits. CONTAINERD_ADDRESS: use that containerd instead of starting one.
demo:
	scripts/demo.sh $(CMD)

test:
	scripts/test.sh

lint: fmt vet staticcheck

fmt:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt: these files need formatting (run gofmt -w):"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	@[ -x "$(STATICCHECK)" ] || { echo "staticcheck not found at $(STATICCHECK); run: make tools"; exit 1; }
	$(STATICCHECK) ./...

# Installs the pinned staticcheck unless that exact version is already there.
tools:
	@if $(GO) version -m "$(STATICCHECK)" 2>/dev/null | grep -qE '^\s+mod\s+honnef\.co/go/tools\s+$(STATICCHECK_VERSION)\s'; then \
		echo "staticcheck $(STATICCHECK_VERSION) present"; \
	else \
		echo "installing staticcheck $(STATICCHECK_VERSION) into $(GOBIN_DIR)"; \
		GOBIN="$(GOBIN_DIR)" $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION); \
	fi

# Host setup; starts containerd (a systemd unit or a background process) unless one
# answers on /run/containerd/containerd.sock, and prints how to stop it.
setup:
	scripts/setup-host.sh --system

# Speed and memory benchmarks of issue 13, as root (each starts its own containerd);
# times are printed with ratios against a baseline measured in the same run. COUNT=N.
bench-start:
	scripts/bench-start.sh

bench-proxy:
	scripts/bench-proxy.sh

bench-scale:
	scripts/bench-scale.sh

clean:
	rm -rf bin
