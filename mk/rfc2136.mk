# Dynamic update (RFC 2136): daemon/rfc2136_test.go and the README drive
# BIND's nsupdate (bind9-dnsutils) directly and through ddclient's nsupdate
# protocol (ddclient is in TEST_DEBS already); daemon/acme_rfc2136_test.go
# has certbot's RFC 2136 plugin and lego's rfc2136 provider (lego, certbot
# and pebble come with mk/acme.mk) obtain certificates through it.
TEST_DEBS += bind9-dnsutils python3-certbot-dns-rfc2136

# bench-update: durable address updates a second (docs/BENCHMARKS.md), the
# same daemon taking them by dyndns2 and by RFC 2136 UPDATE from 200
# concurrent clients, each update a real change acknowledged after commit.
.PHONY: bench-update
bench-update:
	NASREACH_BENCH_UPDATE=1 timeout --foreground --kill-after=15s 300s \
		$(GO) test -count=1 -run '^TestBenchDurableUpdates$$' -v ./daemon | grep -E '^(update |--- |ok|FAIL)'
