package netaddr

import (
	"net"
	"net/netip"
	"testing"
)

func TestAddrPortUnmapsAndKeepsThePort(t *testing.T) {
	mapped := netip.MustParseAddrPort("[::ffff:192.0.2.1]:53")
	cases := []struct {
		name string
		in   net.Addr
		want string
	}{
		{"udp mapped", net.UDPAddrFromAddrPort(mapped), "192.0.2.1:53"},
		{"tcp mapped", net.TCPAddrFromAddrPort(mapped), "192.0.2.1:53"},
		{"udp v6", &net.UDPAddr{IP: net.ParseIP("2001:db8::1"), Port: 3478}, "[2001:db8::1]:3478"},
		{"ip", &net.IPAddr{IP: net.ParseIP("::ffff:198.51.100.7")}, "198.51.100.7:0"},
		{"unix", &net.UnixAddr{Name: "/run/x", Net: "unix"}, "invalid AddrPort"},
		{"nil", nil, "invalid AddrPort"},
	}
	for _, tc := range cases {
		if got := AddrPort(tc.in).String(); got != tc.want {
			t.Errorf("%s: AddrPort(%v) = %s, want %s", tc.name, tc.in, got, tc.want)
		}
	}
}

func TestRealSocketReportsPlainIPv4(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if a := Addr(pc.LocalAddr()); !a.Is4() || !a.IsLoopback() {
		t.Errorf("Addr(%v) = %v, want 127.0.0.1", pc.LocalAddr(), a)
	}
}
