package main

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testTSIGSecret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYnk="

func TestSecondaryAndTSIGKeyFlagsAndCredential(t *testing.T) {
	creds := t.TempDir()
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	keys := "# transfer keys\nknot.example:hmac-sha256:" + testTSIGSecret + "\n\nhmac-sha512:nsd.example:" + testTSIGSecret + "  # kdig's order\n"
	if err := os.WriteFile(filepath.Join(creds, tsigKeysCredential), []byte(keys), 0o400); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseServeConfig(context.Background(), []string{"nasreach", "serve",
		"--secondary", "198.51.100.7", "--secondary", "[2001:db8::7]:5300 key=knot.example",
		"--tsig-key", "flag.example:hmac-sha256:" + testTSIGSecret})
	if err != nil {
		t.Fatal(err)
	}
	secs := cfg.Transfer.Secondaries
	if len(secs) != 2 || secs[0].Addr != netip.MustParseAddrPort("198.51.100.7:53") || secs[0].Key != "" ||
		secs[1].Addr != netip.MustParseAddrPort("[2001:db8::7]:5300") || secs[1].Key != "knot.example." {
		t.Errorf("secondaries %v", secs)
	}
	var names []string
	for _, k := range cfg.Transfer.TSIGKeys {
		names = append(names, k.Name)
	}
	if strings.Join(names, " ") != "flag.example. knot.example. nsd.example." {
		t.Errorf("TSIG keys %v, want the flag's, then the credential's", names)
	}
}

func TestBadSecondaryAndTSIGKeyAreRefusedWithoutTheSecret(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--secondary", "nas.example.net"}, "is not IP or IP:PORT"},
		{[]string{"--secondary", "198.51.100.7 tsig=x"}, "only key=NAME may follow"},
		{[]string{"--secondary", "198.51.100.7 key=missing.example"}, "no TSIG key missing.example"},
		{[]string{"--secondary", "198.51.100.7", "--secondary", "198.51.100.7:53"}, "given twice"},
		{[]string{"--tsig-key", "k:hmac-md5:" + testTSIGSecret}, "unknown algorithm"},
		{[]string{"--tsig-key", "k:hmac-sha256:" + testTSIGSecret, "--tsig-key", "K.:hmac-sha256:" + testTSIGSecret}, "given twice"},
	} {
		_, err := parseServeConfig(context.Background(), append([]string{"nasreach", "serve"}, c.args...))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("serve %v: %v, want an error with %q", c.args, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), testTSIGSecret) {
			t.Errorf("serve %v: the error shows the secret: %v", c.args, err)
		}
	}
}
