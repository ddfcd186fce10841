# ACME DNS-01 for device certificates (daemon/acme_interop_test.go): Pebble,
# Let's Encrypt's ACME test server, validates through the daemon's DNS (by way
# of Unbound, a recursive resolver, as Let's Encrypt's validation does) while
# lego (its exec provider, with curl) and certbot (manual hooks, with curl)
# publish the challenge through the API. lego's acme-dns provider is driven as
# a library: Debian builds the lego binary without it.
TEST_DEBS += pebble unbound lego certbot curl
