# MR-Enclave — the verbs. `make help` lists them.

GO          ?= go
GOBIN       := $(shell $(GO) env GOPATH)/bin
STATICCHECK ?= $(GOBIN)/staticcheck
# The staticcheck release that supports this Go version (go.mod: go 1.26).
STATICCHECK_VERSION ?= v0.8.2
FUZZTIME    ?= 30s
PKGS        := ./...

.PHONY: help build run test lint staticcheck-install bench bench-compare bench-smoke fuzz clean

help:
	@echo "make build        build bin/enclave"
	@echo "make run          run the broker on :8000 with the default configuration"
	@echo "make test         run every test with the race detector"
	@echo "make lint         gofmt check, go vet, staticcheck"
	@echo "make bench        the full benchmarks (several minutes; figures in README.md)"
	@echo "make bench-smoke  every benchmark once, so none can rot (what CI runs)"
	@echo "make bench-compare  enclave bench vs NATS, single node and 3-node cluster (BENCHMARKS.md)"
	@echo "make fuzz         fuzz FuzzDecodeRequest for FUZZTIME ($(FUZZTIME))"
	@echo "make image       the Docker image from ./Dockerfile (golang + distroless): $(IMAGE):latest"
	@echo "make image-scratch  the same FROM scratch, around a binary built here (no registry needed): $(IMAGE):scratch"
	@echo "make e2e          end-to-end: builds the scratch image, runs the compose cluster, kills and cuts off nodes (needs Docker)"

build:
	$(GO) build -o bin/enclave ./cmd/enclave

run:
	$(GO) run ./cmd/enclave

test:
	$(GO) test -race $(PKGS)

lint:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then echo "gofmt: these files need gofmt -w:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
	@test -x "$(STATICCHECK)" || { echo "staticcheck not found at $(STATICCHECK): make staticcheck-install"; exit 1; }
	$(STATICCHECK) $(PKGS)
	@# deploy/bench is a module of its own (the NATS harness): ./... above skips it.
	cd deploy/bench && $(GO) vet ./... && $(STATICCHECK) ./...

staticcheck-install:
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

# The full benchmarks, each with the run length its measurement needs:
# fan-out without sockets; delivered events/s to 1,000 WebSocket subscribers;
# publish→event latency at fixed rates (1,000x = 1 s at 1,000 msg/s, 10 s at
# 100 msg/s); memory per idle connection with 5,000 connections (one run is
# one measurement); then every other benchmark (the cluster's) at its default.
bench:
	$(GO) test -run '^$$' -bench 'Fanout' -benchmem -benchtime=1s -count=3 ./broker/
	$(GO) test -run '^$$' -bench 'WSFanout' -benchmem -benchtime=3s -count=3 ./gateway/
	$(GO) test -run '^$$' -bench 'WSLatency' -benchtime=1000x -count=3 ./gateway/
	$(GO) test -run '^$$' -bench 'WSIdleConnMemory' -benchtime=1x -count=3 ./gateway/
	$(GO) test -run '^$$' -bench . -benchmem $$($(GO) list ./... | grep -v -e /broker$$ -e /gateway$$)
	$(MAKE) bench-compare

# enclave bench (every workload, single node and 3-node loopback cluster)
# beside the same workloads against nats-server; figures in BENCHMARKS.md.
bench-compare:
	bash deploy/bench/run.sh

# Every benchmark once (b.N = 1): proves they still build and run.
bench-smoke:
	$(GO) test -run '^$$' -bench . -benchtime=1x $(PKGS)
	bash deploy/bench/run.sh --smoke

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRequest$$' -fuzztime=$(FUZZTIME) ./gateway/

clean:
	rm -rf bin/

# Docker. IMAGE is the image name; docker-compose.yml uses mr-enclave:latest
# unless ENCLAVE_IMAGE says otherwise.
IMAGE ?= mr-enclave

.PHONY: image image-scratch e2e

image:
	docker build -t $(IMAGE):latest .

# The static binary staged in bin/docker/ with an empty data directory, then
# deploy/Dockerfile.scratch around it: no base image to pull.
image-scratch:
	mkdir -p bin/docker/data
	CGO_ENABLED=0 GOOS=linux $(GO) build -trimpath -ldflags='-s -w' -o bin/docker/enclave ./cmd/enclave
	docker build -f deploy/Dockerfile.scratch -t $(IMAGE):scratch .

# The end-to-end suite (e2e/, build tag e2e): builds its own scratch image,
# starts docker-compose.yml's cluster under a project of its own, breaks it,
# and removes everything it created, also on failure.
e2e:
	$(GO) vet -tags e2e ./e2e/
	$(GO) test -tags e2e -v -count=1 -timeout 20m ./e2e/
