# bench-link: Link relay figures in one run (docs/BENCHMARKS.md): goodput of 1
# and 8 streams relayed (the client over QUIC, and over the TCP carrier as where
# UDP is blocked) vs a direct quic-go connection vs loopback TCP between
# the same two processes vs Link's own direct (hole-punched) path, CPU per GB
# and per CPU-second of each path (the relay's during direct sessions), time
# to first byte and to the direct path, relay memory with 1,000 and 10,000
# idle agents. Three processes:
# the client (the benchmark), the relay and the far end (agent, direct QUIC
# and TCP listeners), the last two children that the benchmark ends (and
# kills if they linger). Loopback only; timeout(1) bounds the whole run.
#
#   make bench-link
#   make bench-link BENCH_LINK_PPROF=/tmp/linkprof   # CPU profiles per load, relay heap profiles
#   make bench-link BENCH_LINK_RELAY_CPU=1           # pin the relay (taskset -c)
BENCH_LINK_PPROF     ?=
BENCH_LINK_RELAY_CPU ?=

.PHONY: bench-link
bench-link:
	@if [ -n "$(BENCH_LINK_PPROF)" ]; then mkdir -p "$(BENCH_LINK_PPROF)"; fi
	NASREACH_LINK_PPROF=$(abspath $(BENCH_LINK_PPROF)) NASREACH_LINK_RELAY_CPU=$(BENCH_LINK_RELAY_CPU) \
	timeout --foreground --kill-after=15s 900s \
		$(GO) test -count=1 -run '^$$' -bench '^BenchmarkLinkReport$$' -benchtime 1x -timeout 14m ./link
