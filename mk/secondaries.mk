# Secondaries: daemon/secondary_test.go runs Knot (knotd) and NSD as real
# secondaries of the daemon and checks transfers with kdig. need-debs.sh
# keeps their packages' services from starting.
TEST_DEBS += knot knot-dnsutils nsd
