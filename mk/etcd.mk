# The store on etcd (store/etcd*.go): its tests start their own etcd, one
# member for the behaviour suite, on Unix sockets in a temporary directory.
# Debian's etcd-server ships the etcd program (3.4); the tests need no
# running service.
TEST_DEBS += etcd-server
