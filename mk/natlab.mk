# NAT lab (internal/natlab, docs/NATLAB.md): the tests build an Internet of
# network namespaces with ip(8) and nftables' nft(8). Run as root, as CI does;
# without root those tests skip.
TEST_DEBS += iproute2 nftables
