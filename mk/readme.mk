# The README test (readme_test.go) runs the README's command blocks as written;
# these are the programs they use besides dig (dnsutils) and coreutils.
TEST_DEBS += curl python3 openssl
