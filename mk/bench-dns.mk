# bench-dns: nasreach's authoritative DNS against Knot and NSD with the same
# 100,000-device zone, each server pinned to one core and dnsperf to another,
# plus durable dyndns2 updates per second. docs/BENCHMARKS.md explains the
# figures. Loopback only. The driver stops every server it starts (also on
# Ctrl-C and at its own time bound); timeout(1) bounds the driver, and the trap
# kills any server left if the driver itself was killed (it keeps their process
# groups listed in the pid file).
#
#   make bench-dns                                     # the published figures
#   make bench-dns BENCH_DNS_FLAGS='-pprof dns.pprof'  # plus a CPU profile
#   make bench-dns BENCH_DNS_FLAGS='-peers knot -duration 5s'
#   make bench-dns BENCH_DNS_FLAGS='-devices 1000000' BENCH_DNS_TIMEOUT=1200  # a million devices
#   make bench-dns BENCH_DNS_SERVER_CPU=0,1 BENCH_DNS_CLIENT_CPU=0,1  # two cores, shared
#                                                      # with dnsperf: see dnsperf_cpu
BENCH_DNS_SERVER_CPU ?= 0
BENCH_DNS_CLIENT_CPU ?= 1
BENCH_DNS_FLAGS      ?=
BENCH_DNS_TIMEOUT    ?= 290# seconds the driver may take; timeout(1) allows 40 more

.PHONY: bench-dns
bench-dns:
	@./scripts/need-debs.sh $(BENCH_DEBS)
	$(GO) build -o bin/nasreach ./cmd/nasreach
	$(GO) build -o bin/dnsbench ./bench/dnsbench
	@pids=$$(mktemp); \
	trap 'for g in $$(cat "$$pids"); do \
	        grep -qsaE "nasreach|knotd|nsd|dnsbench" /proc/$$g/cmdline && kill -s KILL -- -$$g; \
	      done; rm -f "$$pids"' EXIT; \
	trap 'exit 130' INT TERM; \
	set -x; \
	timeout --foreground --kill-after=15s $$(( $(BENCH_DNS_TIMEOUT) + 40 ))s \
		taskset -c $(BENCH_DNS_CLIENT_CPU) ./bin/dnsbench -pidfile "$$pids" -timeout $(BENCH_DNS_TIMEOUT)s \
		-nasreach bin/nasreach -server-cpu $(BENCH_DNS_SERVER_CPU) -client-cpu $(BENCH_DNS_CLIENT_CPU) $(BENCH_DNS_FLAGS)
