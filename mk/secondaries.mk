# Secondaries: daemon/secondary_test.go runs Knot (knotd) and NSD as real
# secondaries of the daemon and checks transfers with kdig. need-debs.sh
# keeps their packages' services from starting.
TEST_DEBS += knot knot-dnsutils nsd

# bench-xfr: zone transfer figures (docs/BENCHMARKS.md): an AXFR of 100,000
# devices (seconds, live heap before and at most during), and how long a
# dyndns2 update takes to be answered by a real Knot secondary (p50, p99),
# updates a second apart and a stream of ten a second. Loopback only; the
# test stops the Knot it starts.
.PHONY: bench-xfr
bench-xfr:
	@./scripts/need-debs.sh knot knot-dnsutils
	timeout --foreground --kill-after=15s 600s \
		$(GO) test -count=1 -run '^$$' -bench '^BenchmarkAXFR$$' -benchtime 3x ./dnsserver
	NASREACH_BENCH_XFR=1 timeout --foreground --kill-after=15s 300s \
		$(GO) test -count=1 -run '^TestBenchUpdateReachesKnot$$' -v ./daemon | grep -E '^(xfr |--- |ok|FAIL)'
