# NAT lab (internal/natlab, docs/NATLAB.md): the tests build an Internet of
# network namespaces with ip(8) and nftables' nft(8). Run as root, as CI does;
# without root those tests skip.
TEST_DEBS += iproute2 nftables

# bench-birthday: birthday probing in the NAT lab (docs/BENCHMARKS.md): a new
# client reaches an agent across a symmetric NAT and a masquerading one,
# BENCH_BIRTHDAY_RUNS times (half with the symmetric NAT on the agent's
# side), four at a time; prints the share that went direct, the time to the
# direct path and the ports sprayed. Root only; timeout(1) bounds the run.
#
#   make bench-birthday
#   make bench-birthday BENCH_BIRTHDAY_RUNS=1000
BENCH_BIRTHDAY_RUNS ?= 200

.PHONY: bench-birthday
bench-birthday:
	@./scripts/need-debs.sh iproute2 nftables
	timeout --foreground --kill-after=15s 900s \
		$(GO) test -count=1 -run '^$$' -bench '^BenchmarkBirthdayProbing$$' -benchtime $(BENCH_BIRTHDAY_RUNS)x -timeout 14m ./internal/natlab

# bench-lab-ttfb: what a user of connect waits for in the NAT lab
# (docs/BENCHMARKS.md): BENCH_LAB_TTFB_RUNS new clients reach an agent across
# two masquerading routers; prints p50 and p99 of the first byte through the
# relay, of the direct path being up, and of the first byte on it. Root only.
#
#   make bench-lab-ttfb
BENCH_LAB_TTFB_RUNS ?= 200

.PHONY: bench-lab-ttfb
bench-lab-ttfb:
	@./scripts/need-debs.sh iproute2 nftables
	timeout --foreground --kill-after=15s 600s \
		$(GO) test -count=1 -run '^$$' -bench '^BenchmarkLabTimeToFirstByte$$' -benchtime $(BENCH_LAB_TTFB_RUNS)x -timeout 9m ./internal/natlab
