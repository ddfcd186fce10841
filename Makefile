# nasreach — build, run, test, benchmark.
GO       ?= go
BIN      := bin/nasreach
VERSION  := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
# -trimpath makes release builds reproducible; tests set BUILDFLAGS= to reuse
# the build cache instead of recompiling every dependency.
BUILDFLAGS ?= -trimpath
# Third-party programs the test suite drives (interop tests).
TEST_DEBS  := ddclient inadyn dnsutils
# Peers and load generators for the benchmarks.
BENCH_DEBS := dnsperf knot nsd util-linux

.PHONY: all build run test test-deps vet fmt-check fuzz clean install man

all: build

# -v names each package as it compiles: the first build downloads the modules
# ("go: downloading …") and compiles about 150 packages, a few minutes on a
# small machine; later builds are quiet and take seconds.
build:
	@[ -x $(BIN) ] || echo "building $(BIN): the first build downloads modules and compiles every package (a few minutes); later builds take seconds" >&2
	$(GO) build -v $(BUILDFLAGS) -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/nasreach

## run: the daemon on its embedded default (loopback dev ports, data in ./data)
run: build
	./$(BIN) serve

## test: everything CI runs. The race detector makes the 1 GiB Link transfer
## too slow for small machines, so that one test (build tag !race) runs again
## without it.
## gotestsum (a tool pinned in go.mod) prints one line per package as it
## finishes and, at the end, every skipped test with its reason and every
## failure with its output.
GOTESTSUM := $(GO) tool gotestsum --format pkgname --format-hide-empty-pkg --
test: test-deps fmt-check vet
	@echo "testing every package with the race detector (the first run compiles for a few minutes; a line per package as it finishes)" >&2
	$(GOTESTSUM) -race -count=1 -timeout 20m ./...
	$(GOTESTSUM) -count=1 -timeout 10m -run '^TestTransfer1GiBArrivesIntact$$' ./link

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

## install: binary, systemd unit, default config (kept if present), man page,
## UDP buffer limits (sysctl.d).
## PREFIX and DESTDIR as usual: make install DESTDIR=/tmp/pkg PREFIX=/usr
PREFIX  ?= /usr/local
DESTDIR ?=
SYSCONF ?= /etc
# The unit goes where systemd looks for it: a package (PREFIX=/usr) ships it in
# /usr/lib/systemd/system, a local install in /etc/systemd/system.
ifeq ($(PREFIX),/usr/local)
UNITDIR ?= $(SYSCONF)/systemd/system
else
UNITDIR ?= $(PREFIX)/lib/systemd/system
endif
install: build man
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/nasreach
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONF)/nasreach
	sed 's|/usr/local/bin/nasreach|$(PREFIX)/bin/nasreach|' dist/systemd/nasreach.service > $(DESTDIR)$(UNITDIR)/nasreach.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/nasreach.service
	[ -e $(DESTDIR)$(SYSCONF)/nasreach/nasreach.toml ] || install -m 0644 dist/nasreach.toml $(DESTDIR)$(SYSCONF)/nasreach/nasreach.toml
	install -D -m 0644 bin/nasreach.8 $(DESTDIR)$(PREFIX)/share/man/man8/nasreach.8
	install -D -m 0644 dist/sysctl.d/60-nasreach.conf $(DESTDIR)$(PREFIX)/lib/sysctl.d/60-nasreach.conf

man: build
	./$(BIN) man > bin/nasreach.8

clean:
	rm -rf bin

# Feature fragments (benchmarks, extra test dependencies) live in mk/*.mk so
# that each concern keeps its own targets; a fragment may add to TEST_DEBS.
include $(wildcard mk/*.mk)
