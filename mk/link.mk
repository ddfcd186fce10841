# bench-link: Link relay figures in one run (docs/BENCHMARKS-link.md): goodput
# of 1 and 8 streams relayed vs a direct quic-go connection vs loopback TCP,
# time to first byte, relay CPU per GB, relay memory with 1,000 and 10,000
# idle agents. The relay runs as a child process; everything is on 127.0.0.1.
# timeout(1) bounds the run.
.PHONY: bench-link
bench-link:
	timeout --foreground --kill-after=15s 900s \
		$(GO) test -count=1 -run '^$$' -bench '^BenchmarkLinkReport$$' -benchtime 1x -timeout 14m ./link
