# STUN/TURN: the interop tests drive coturn's client utilities
# (turnutils_stunclient, turnutils_uclient, turnutils_peer); the benchmark also
# runs coturn's turnserver as the reference.
TEST_DEBS  += coturn
BENCH_DEBS += coturn

# bench-turn: this relay against coturn's turnserver with equivalent settings
# (--no-cli --no-tls --no-dtls; --allow-loopback-peers there, 127.0.0.1/32
# allow-listed here), each restarted for every run and pinned to
# BENCH_TURN_SERVER_CPU, with turnutils_uclient, turnutils_peer and the Go
# allocation generator pinned to BENCH_TURN_CLIENT_CPU. Cases: UDP 100 B,
# UDP 1000 B, TCP to the server (100 B); then allocations per second. Prints
# one summary line per figure ("turn udp100 ours rt_per_s=..."), progress on
# stderr. Loopback only; the driver kills every process it started by PID
# (and the kernel does if the driver dies); timeout(1) bounds the whole run.
#
#   make bench-turn
#   make bench-turn BENCH_TURN_SECONDS=20 BENCH_TURN_ROUNDS=3
#   make bench-turn BENCH_TURN_PPROF=/tmp/turnprof   # CPU profile of ours per run
BENCH_TURN_SERVER_CPU    ?= 0
BENCH_TURN_CLIENT_CPU    ?= 1
BENCH_TURN_CLIENTS       ?= 20
BENCH_TURN_SECONDS       ?= 10
BENCH_TURN_ROUNDS        ?= 2
BENCH_TURN_ALLOC_SECONDS ?= 5
BENCH_TURN_PPROF         ?=

.PHONY: bench-turn
bench-turn:
	@./scripts/need-debs.sh coturn util-linux
	$(GO) test -c -o bin/turnbench.test ./turnserver
	@if [ -n "$(BENCH_TURN_PPROF)" ]; then mkdir -p "$(BENCH_TURN_PPROF)"; fi
	BENCH_TURN_SERVER_CPU=$(BENCH_TURN_SERVER_CPU) BENCH_TURN_CLIENTS=$(BENCH_TURN_CLIENTS) \
	BENCH_TURN_SECONDS=$(BENCH_TURN_SECONDS) BENCH_TURN_ROUNDS=$(BENCH_TURN_ROUNDS) \
	BENCH_TURN_ALLOC_SECONDS=$(BENCH_TURN_ALLOC_SECONDS) BENCH_TURN_PPROF=$(BENCH_TURN_PPROF) \
	NASREACH_BENCH_TURN=1 \
	timeout --foreground --kill-after=15s 600s taskset -c $(BENCH_TURN_CLIENT_CPU) \
		./bin/turnbench.test -test.run '^TestBenchTURN$$' -test.count 1 -test.timeout 580s
