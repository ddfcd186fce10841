# nasreach — build, run, test, benchmark.
GO       ?= go
BIN      := bin/nasreach
VERSION  := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
# Third-party programs the test suite drives (interop tests).
TEST_DEBS  := ddclient inadyn dnsutils
# Peers and load generators for the benchmarks.
BENCH_DEBS := dnsperf knot nsd util-linux

.PHONY: all build run test test-deps vet fmt-check fuzz clean bench-dns

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/nasreach

## run: the daemon on its embedded default (loopback dev ports, data in ./data)
run: build
	./$(BIN) serve

## test: everything CI runs
test: test-deps fmt-check vet
	$(GO) test -race -count=1 -timeout 20m ./...

test-deps:
	@./scripts/need-debs.sh $(TEST_DEBS)

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on: $$out"; exit 1; fi

## fuzz: run every fuzz target for FUZZTIME each (default 20s)
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf bin

# Feature fragments (benchmarks, extra test dependencies) live in mk/*.mk so
# that each concern keeps its own targets; a fragment may add to TEST_DEBS.
include $(wildcard mk/*.mk)
