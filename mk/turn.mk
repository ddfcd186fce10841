# STUN/TURN: the interop tests drive coturn's client utilities
# (turnutils_stunclient, turnutils_uclient, turnutils_peer); the benchmark also
# runs coturn's turnserver as the reference.
TEST_DEBS  += coturn
BENCH_DEBS += coturn
