# The store on etcd (store/etcd*.go): its tests start their own etcd, one
# member for the behaviour suite, on Unix sockets in a temporary directory.
# Debian's etcd-server ships the etcd program (3.4); the tests need no
# running service.
TEST_DEBS += etcd-server

# bench-etcd: the bytes a device takes in etcd (so how many fit in etcd's
# default 2 GiB quota), the history an update leaves until compaction, and
# durable dyndns2 updates a second over three nodes on a three-member
# cluster beside one bbolt daemon in the same run (docs/BENCHMARKS.md).
.PHONY: bench-etcd
bench-etcd:
	NASREACH_BENCH_ETCD=1 timeout --foreground --kill-after=15s 400s \
		$(GO) test -count=1 -run '^TestBenchEtcd$$' -v ./daemon | grep -E '^(etcd |--- |ok|FAIL)'
