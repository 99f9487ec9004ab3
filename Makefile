# Switchyard. `make run` starts the shop locally; `make test` is everything CI
# checks. Both need only Go, gcc, the PostgreSQL server binaries and
# redis-server (`make test` psql too); `make preflight` checks for them.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

BIN     := $(CURDIR)/.bin
BUF     := $(BIN)/buf
GRPCURL := $(BIN)/grpcurl
# golangci-lint has a module of its own (tools/lint) so that its many
# dependencies never move buf's or grpcurl's versions.
GOLANGCI_LINT := $(BIN)/golangci-lint
# The services are the modules under services/ with a command of their own
# name (services/<name>/cmd/<name>); shop/registry lists them with their
# ports, and its test fails if the two disagree.
SERVICES := $(sort $(foreach m,$(wildcard services/*/cmd/*/main.go),$(word 2,$(subst /, ,$(m)))))
MODULES  := ./gen/go/... ./platform/... ./shop/... ./services/rules/... $(foreach s,$(SERVICES),./services/$(s)/...)
# The one way to build a service, here and in the Dockerfile (each service
# module builds on its own, as in the image; deploy/ tests that they match).
GOBUILD := GOWORK=off go build -trimpath
GOTEST_FLAGS ?= -count=1 -timeout 20m

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# What `make run`, `make soak` and `make test` need from the machine,
# checked first (shop/cmd/preflight) so that a missing prerequisite is named
# in one line, with what to install, before minutes of building and
# linting. The check is built without cgo: it must run where gcc is missing.
PREFLIGHT_NEEDS := cc postgres redis-server

.PHONY: preflight
preflight: ## Check for gcc, the PostgreSQL server binaries and redis-server (and psql, for make test); name what to install
	@mkdir -p $(BIN)
	@cd shop && CGO_ENABLED=0 $(GOBUILD) -o $(BIN)/preflight ./cmd/preflight
	@$(BIN)/preflight $(PREFLIGHT_NEEDS)

$(BUF): tools/go.mod tools/go.sum
	@mkdir -p $(BIN)
	GOWORK=off go -C tools build -o $(BUF) github.com/bufbuild/buf/cmd/buf

$(GRPCURL): tools/go.mod tools/go.sum
	@mkdir -p $(BIN)
	GOWORK=off go -C tools build -o $(GRPCURL) github.com/fullstorydev/grpcurl/cmd/grpcurl

$(GOLANGCI_LINT): tools/lint/go.mod tools/lint/go.sum
	@mkdir -p $(BIN)
	GOWORK=off go -C tools/lint build -o $(GOLANGCI_LINT) github.com/golangci/golangci-lint/v2/cmd/golangci-lint

.PHONY: tools
tools: $(BUF) $(GRPCURL) $(GOLANGCI_LINT) ## Build the pinned tools (buf, grpcurl, golangci-lint) into .bin/

.PHONY: grpcurl
grpcurl: $(GRPCURL) ## Build only grpcurl into .bin/ (for the walkthrough; golangci-lint takes minutes)

.PHONY: generate
generate: $(BUF) ## Regenerate gen/go from proto/ (and the library's options from platform/proto/)
	$(BUF) generate

# Generated files live in gen/go (the shop's API) and in platform/eventpb and
# platform/internal/testpb (the library's options and test events).
GENERATED := gen/go platform/eventpb platform/internal/testpb

.PHONY: check-generated
check-generated: $(BUF) ## Fail if generated code is stale
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(BUF) generate -o "$$tmp"; \
	for d in $(GENERATED); do \
	  for f in $$(cd "$$tmp/$$d" && find . -name '*.pb.go' -printf '%P\n') $$(cd $$d && find . -name '*.pb.go' -printf '%P\n'); do \
	    if ! cmp -s "$$tmp/$$d/$$f" "$$d/$$f"; then \
	      echo "$$d/$$f is stale: run 'make generate' and commit the result" >&2; exit 1; \
	    fi; \
	  done; \
	done
	@echo "generated code is up to date"

.PHONY: lint
lint: $(BUF) $(GOLANGCI_LINT) ## buf lint, gofmt, go vet and golangci-lint (.golangci.yml)
	$(BUF) lint
	@unformatted=$$(gofmt -l gen platform services shop deploy); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:" $$unformatted >&2; exit 1; fi
	go vet $(MODULES)
	cd deploy && GOWORK=off go vet ./...
	$(GOLANGCI_LINT) run $(MODULES)
	cd deploy && GOWORK=off $(GOLANGCI_LINT) run --config ../.golangci.yml ./...

.PHONY: breaking
breaking: $(BUF) ## buf breaking against the newest v* tag, if any
	@tag=$$(git tag --list 'v*' --sort=-version:refname | head -n1); \
	if [ -z "$$tag" ]; then echo "no v* tag yet: skipping buf breaking"; \
	else echo "buf breaking against $$tag"; $(BUF) breaking --against ".git#tag=$$tag"; fi

.PHONY: test
# deploy's tests run psql from PATH.
test: PREFLIGHT_NEEDS += psql
test: preflight check-generated lint breaking ## Everything CI checks
	go test -race $(GOTEST_FLAGS) ./platform/...
	go test $(GOTEST_FLAGS) $(filter-out ./platform/...,$(MODULES))
	SWITCHYARD_E2E_TRANSPORT=redis go test $(GOTEST_FLAGS) ./shop/e2e/
	cd deploy && GOWORK=off go test $(GOTEST_FLAGS) ./...
	$(MAKE) --no-print-directory soak DURATION=60s

.PHONY: test-short
test-short: ## Unit tests only, in under a minute (-short skips every test that starts PostgreSQL, a broker, Redis or the shop)
	go test -short -count=1 $(MODULES)

.PHONY: bench
bench: ## Relay and consumer benchmarks (see docs/benchmarks.md)
	go test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 30m ./platform/bench/

.PHONY: build
build: ## Build the six services and the local runner into .bin/
	@mkdir -p $(BIN)
	@for s in $(SERVICES); do (cd services/$$s && $(GOBUILD) -o $(BIN)/$$s ./cmd/$$s) || exit 1; done
	cd shop && $(GOBUILD) -o $(BIN)/shop ./cmd/shop

# A real Kubernetes control plane, built from the Go module proxy into
# .bin/k8s/ once (again only when a pinning go.mod changes): kube-apiserver,
# kube-controller-manager and kube-scheduler (tools/kube), etcd (tools/etcd)
# and kwok's fake nodes (tools/kwok). deploy/controlplane_test.go runs the
# chart against it whenever these binaries are present.
K8S_BIN  := $(BIN)/k8s
KUBE_CMDS := kube-apiserver kube-controller-manager kube-scheduler
# Without the version ldflags the server reports v0.0.0 and Helm refuses the
# chart's kubeVersion; the version is the one tools/kube/go.mod pins.
KUBE_VERSION = $(shell GOWORK=off go -C tools/kube list -m -f '{{.Version}}' k8s.io/kubernetes)
KUBE_LDFLAGS = -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
  -X k8s.io/component-base/version.gitMajor=$(word 1,$(subst ., ,$(KUBE_VERSION:v%=%))) \
  -X k8s.io/component-base/version.gitMinor=$(word 2,$(subst ., ,$(KUBE_VERSION:v%=%))) \
  -X k8s.io/component-base/version.gitTreeState=clean

$(addprefix $(K8S_BIN)/,$(KUBE_CMDS)) &: tools/kube/go.mod tools/kube/go.sum
	@mkdir -p $(K8S_BIN)
	GOWORK=off CGO_ENABLED=0 go -C tools/kube build -trimpath -ldflags '$(KUBE_LDFLAGS)' -o $(K8S_BIN)/ $(addprefix k8s.io/kubernetes/cmd/,$(KUBE_CMDS))

$(K8S_BIN)/etcd: tools/etcd/go.mod tools/etcd/go.sum
	@mkdir -p $(K8S_BIN)
	GOWORK=off CGO_ENABLED=0 go -C tools/etcd build -trimpath -o $@ go.etcd.io/etcd/server/v3

# kwok needs its stages as configuration: kwokctl's defaults (nodes Ready,
# with a lease; a scheduled pod Running and Ready; a deleted one gone),
# taken from the pinned release.
KWOK_STAGES := node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
  pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete

$(K8S_BIN)/kwok $(K8S_BIN)/kwok-stages.yaml &: tools/kwok/go.mod tools/kwok/go.sum
	@mkdir -p $(K8S_BIN)
	GOWORK=off CGO_ENABLED=0 go -C tools/kwok build -trimpath -o $(K8S_BIN)/kwok sigs.k8s.io/kwok/cmd/kwok
	dir=$$(GOWORK=off go -C tools/kwok list -m -f '{{.Dir}}' sigs.k8s.io/kwok); \
	for s in $(KWOK_STAGES); do echo "---"; cat "$$dir/kustomize/stage/$$s.yaml"; done > $(K8S_BIN)/kwok-stages.yaml.tmp
	mv $(K8S_BIN)/kwok-stages.yaml.tmp $(K8S_BIN)/kwok-stages.yaml

.PHONY: control-plane
control-plane: $(addprefix $(K8S_BIN)/,$(KUBE_CMDS) etcd kwok kwok-stages.yaml) ## Build the Kubernetes control plane for k8s-check into .bin/k8s/

.PHONY: k8s-check
k8s-check: control-plane ## Install, upgrade, uninstall and reinstall the chart on a real control plane (see README)
	cd deploy && GOWORK=off SWITCHYARD_K8S_BIN=$(K8S_BIN) go test $(GOTEST_FLAGS) -run 'TestControlPlane' -v .

KUBE_CONTEXT ?= kind-switchyard
HELM_FLAGS   ?=

.PHONY: kind-up
kind-up: ## Create the local kind cluster (deploy/kind/cluster.yaml)
	kind create cluster --config deploy/kind/cluster.yaml

.PHONY: images
images: ## Build the six images with docker (and load them into kind)
	@for s in $(SERVICES); do docker build --build-arg SERVICE=$$s -t switchyard-$$s:0.1.0 . || exit 1; done
	@case "$(KUBE_CONTEXT)" in kind-*) for s in $(SERVICES); do kind load docker-image --name switchyard switchyard-$$s:0.1.0 || exit 1; done;; esac

.PHONY: deploy
deploy: images ## Install or upgrade the chart into $(KUBE_CONTEXT)
	helm upgrade --install switchyard charts/switchyard --kube-context $(KUBE_CONTEXT) \
	  --namespace switchyard --create-namespace --wait --timeout 5m $(HELM_FLAGS)

.PHONY: undeploy
undeploy: ## Uninstall the chart (the PersistentVolumeClaims stay; delete the namespace to drop data)
	helm uninstall switchyard --kube-context $(KUBE_CONTEXT) --namespace switchyard

.PHONY: soak
soak: preflight build ## Chaos soak: load plus faults for DURATION (5m), then every invariant; last line "soak: N orders, N faults, N violations"
	cd shop && $(GOBUILD) -o $(BIN)/soak ./cmd/soak
	$(BIN)/soak -bin $(BIN) -duration $(or $(DURATION),5m) $(if $(SEED),-seed $(SEED))

.PHONY: loadgen
loadgen: ## Drive CreateOrder against a running `make run` (RATE=50 DURATION=20s PRODUCTS=1; PLOT=file.svg draws the run)
	cd shop && go run ./cmd/loadgen -rate $(or $(RATE),50) -duration $(or $(DURATION),20s) -products $(or $(PRODUCTS),1) $(if $(PLOT),-plot $(abspath $(PLOT)))

.PHONY: run
run: preflight build ## Start the whole shop locally (data in .switchyard/; TRANSPORT=redis for Redis Streams; ANALYTICS_INSTANCES=3 for more analytics; Ctrl-C stops it)
	@$(BIN)/shop -dir .switchyard -bin $(BIN) -transport $(or $(TRANSPORT),kafka) -analytics-instances $(or $(ANALYTICS_INSTANCES),1)
