# Constellation: build, test, benchmark. `make help` lists the targets.
SHELL := /usr/bin/env bash
GO ?= go
GOBIN := $(shell $(GO) env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)

MODULE  := github.com/constellation-dev/constellation
COMMIT  := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
VERSION ?= v0.1.0-dev
LDFLAGS := -X $(MODULE)/internal/version.Version=$(VERSION) -X $(MODULE)/internal/version.Commit=$(COMMIT)

# Fuzz targets run briefly by `make test`: every `func FuzzXxx(f *testing.F)` in the code, as
# <package>:<target> (scripts/fuzz-targets.sh finds them; test/houserules checks it finds them all).
FUZZ_TARGETS ?= $(shell bash scripts/fuzz-targets.sh)
# A count, not a duration: duration-based -fuzztime races the fuzz coordinator's deadline in Go 1.26
# (golang/go#75804, fixed in Go 1.27) and fails spuriously with "context deadline exceeded".
FUZZTIME ?= 20000x

.PHONY: help setup build test unit lint fuzz-short fuzz soak-reattest soak-mini bench e2e-qemu e2e-k8s-upgrade demo clean kubernetes kubernetes-previous components node-image node-image-previous assemble-node-image cluster release release-key

help:
	@echo "make setup      install Debian packages and Go tools this project needs"
	@echo "make build      build bin/constellation"
	@echo "make demo       set up, build, and verify genuine evidence from a software TPM with the CLI"
	@echo "make test       lint, unit and integration tests (real TPMs), short fuzzing"
	@echo "make bench      benchmark suite, one line per figure (BENCH=<name> selects one)"
	@echo "make soak-reattest  30-minute soak: continuous attestation never quarantines an honest node"
	@echo "make soak-mini  30-minute soak of a mini cluster under load (SOAK=5m shortens it; needs make node-image)"
	@echo "make node-image build Kubernetes and the node components from source, then the node image"
	@echo "make node-image-previous  the node image with the previous Kubernetes release (make kubernetes-previous)"
	@echo "make e2e-k8s-upgrade  upgrade a mini cluster from the previous Kubernetes release to the pinned one"
	@echo "make cluster    everything above, then a local cluster (1 control plane, 2 workers) in this directory"
	@echo "make release    the node image in $(RELEASE_OUT), its measurements signed with the release key"
	@echo "make release-key  create the release key pair (once) and install its root in the repository"

setup:
	@bash scripts/setup.sh

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/constellation ./cmd/constellation
	CGO_ENABLED=1 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/bootstrapper ./cmd/bootstrapper
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/node-init ./cmd/node-init
	for svc in join-service key-service verification-service upgrade-controller; do \
		CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/$$svc ./cmd/$$svc || exit 1; \
	done

test: lint unit fuzz-short

unit:
	$(GO) test -race -count=1 -timeout 55m ./...

lint:
	@unformatted="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...

# A 30-minute soak of the continuous attestation (not part of `make test`): honest nodes, a lossy network,
# changes of leader; no node may ever be failed or quarantined.
soak-reattest:
	REATTEST_SOAK=$${REATTEST_SOAK:-30m} $(GO) test -race -count=1 -timeout 45m -v -run '^TestSoakNoFalseQuarantine$$' ./internal/reattestation/

# A soak of a real mini cluster (1 control plane, 2 workers) under steady load while the continuous attestation
# runs at its default interval (not part of `make test`; needs `make node-image`). SOAK sets the duration,
# SOAK_TIMEOUT the test's limit (at least SOAK + 20m), SOAK_REPORT a file for the figures. It waits for the
# machine's mini-cluster lock.
SOAK ?= 30m
SOAK_TIMEOUT ?= 60m
SOAK_REPORT ?=
soak-mini:
	flock /tmp/mini-cluster.lock env CONSTELLATION_E2E_SOAK=$(SOAK) CONSTELLATION_E2E_SOAK_REPORT=$(SOAK_REPORT) \
		$(GO) test -race -count=1 -timeout $(SOAK_TIMEOUT) -v -run '^TestMiniSoak$$' ./test/e2e/

fuzz-short:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg > /tmp/fuzz-$$name.log 2>&1 || { cat /tmp/fuzz-$$name.log; exit 1; }; \
	done

# Longer fuzzing of one target: make fuzz T=./internal/attestation/eventlog:FuzzParse FUZZTIME=5000000x
fuzz:
	$(GO) test -run '^$$' -fuzz "^$${T##*:}\$$" -fuzztime $(FUZZTIME) $${T%%:*}

bench:
	@$(GO) run ./tools/bench

# The Kubernetes cluster of QEMU machines (1 control plane, 1 worker; tens of minutes under TCG), on its own.
e2e-qemu:
	flock /tmp/qemu.lock env CONSTELLATION_E2E_QEMU_CLUSTER=1 $(GO) test -race -count=1 -timeout 120m -v -run '^TestQEMUCluster$$' ./test/e2e/

demo: setup build
	@bash scripts/demo.sh

kubernetes:
	@bash scripts/build-kubernetes.sh

# The previous Kubernetes release (build/kubernetes-previous), the one a cluster upgrades from in the Kubernetes
# upgrade end-to-end test, into _out/kubernetes-previous (never _out/kubernetes).
kubernetes-previous:
	@bash scripts/build-kubernetes.sh build/kubernetes-previous _out/kubernetes-previous

components:
	@bash scripts/build-components.sh

NODE_IMAGE_OUT ?= _out/node-image
node-image: setup build kubernetes components assemble-node-image

# Node image A of the Kubernetes upgrade test: the node image with the previous Kubernetes release, everything
# else equal (the same components, with their own versions' image tags, and the same services).
PREVIOUS_NODE_IMAGE_OUT ?= _out/node-image-previous
node-image-previous: setup build kubernetes kubernetes-previous components
	$(GO) run -ldflags "$(LDFLAGS)" ./tools/node-image -out $(PREVIOUS_NODE_IMAGE_OUT) -kubernetes-bin _out/kubernetes-previous/bin -components-kubeadm _out/kubernetes/bin/kubeadm
	$(GO) run ./tools/sign-measurements -image-dir $(PREVIOUS_NODE_IMAGE_OUT)

# The Kubernetes upgrade on a mini cluster (1 control plane, 1 worker), from the previous release (image A,
# node-image-previous) to the pinned one (image B, node-image) with apply; not part of `make test`.
e2e-k8s-upgrade: node-image node-image-previous
	flock /tmp/mini-cluster.lock $(GO) test -race -count=1 -timeout 60m -v -run '^TestMiniKubernetesUpgrade$$' ./test/e2e/

# The node image from the binaries already built (the last step of node-image).
assemble-node-image:
	$(GO) run -ldflags "$(LDFLAGS)" ./tools/node-image -out $(NODE_IMAGE_OUT)
	$(GO) run ./tools/sign-measurements -image-dir $(NODE_IMAGE_OUT)

# Release signing: the release directory holds the release key and the release log's key, encrypted under
# the passphrase in $$CONSTELLATION_RELEASE_KEY_PASSPHRASE (read from the environment only), and the release
# log. The CLI embeds the release root (internal/attestation/measurements/signed/release-root.json).
RELEASE_DIR ?= $(or $(CONSTELLATION_RELEASE_DIR),/var/lib/constellation/release)
RELEASE_OUT ?= _out/release

release-key:
	$(GO) run ./tools/sign-measurements release-key -dir $(RELEASE_DIR) -install

release: setup build kubernetes components
	$(GO) run -ldflags "$(LDFLAGS)" ./tools/node-image -out $(RELEASE_OUT)
	$(GO) run ./tools/sign-measurements release -dir $(RELEASE_DIR) -image-dir $(RELEASE_OUT)

cluster: node-image
	bin/constellation mini up --allow-dev-signed

clean:
	rm -rf bin _out
