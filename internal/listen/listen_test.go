package listen

import (
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
)

func TestPortZeroGivesOnePortForUDPAndTCP(t *testing.T) {
	for range 50 { // the kernel's UDP pick is sometimes taken on TCP: Bind retries
		s, err := Bind(Config{Addr: "127.0.0.1:0", UDPBuffer: 1 << 16})
		if err != nil {
			t.Fatal(err)
		}
		u, tc := s.UDP[0].LocalAddr().(*net.UDPAddr), s.TCP[0].Addr().(*net.TCPAddr)
		if u.Port != tc.Port || int(s.Addr.Port()) != u.Port || s.Addr.Addr().String() != "127.0.0.1" {
			t.Fatalf("udp %v, tcp %v, Addr %v: want one address", u, tc, s.Addr)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCopiesShareThePort(t *testing.T) {
	if !ReusePortSupported {
		t.Skip("no SO_REUSEPORT here")
	}
	s, err := Bind(Config{Addr: "127.0.0.1:0", Copies: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if len(s.UDP) != 3 || len(s.TCP) != 3 {
		t.Fatalf("%d udp and %d tcp sockets, want 3 each", len(s.UDP), len(s.TCP))
	}
	for _, c := range s.UDP {
		if c.LocalAddr().(*net.UDPAddr).Port != int(s.Addr.Port()) {
			t.Errorf("udp socket on %v, want port %d", c.LocalAddr(), s.Addr.Port())
		}
	}
	for _, l := range s.TCP {
		if l.Addr().(*net.TCPAddr).Port != int(s.Addr.Port()) {
			t.Errorf("tcp listener on %v, want port %d", l.Addr(), s.Addr.Port())
		}
	}
}

func TestTCPOnlyOpensNoUDP(t *testing.T) {
	s, err := Bind(Config{Addr: "127.0.0.1:0", TCPOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if len(s.UDP) != 0 || len(s.TCP) != 1 {
		t.Errorf("%d udp and %d tcp sockets, want 0 and 1", len(s.UDP), len(s.TCP))
	}
}

func TestTakenPortIsAnErrorAndLeavesNothingOpen(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	addr := held.Addr().String()
	if _, err := Bind(Config{Addr: addr}); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Bind(%s) with its TCP port taken: %v, want EADDRINUSE", addr, err)
	}
	// The UDP socket Bind opened before TCP failed is closed again.
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("udp %s still held after the failed Bind: %v", addr, err)
	}
	pc.Close()
}

func TestBadAddressIsAnError(t *testing.T) {
	if _, err := Bind(Config{Addr: "no-port"}); err == nil {
		t.Error("Bind(no-port) succeeded")
	}
}

func TestCheckAddr(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:53", "[::]:53", ":53", "127.0.0.1:0", "localhost:10053", "ns1.example.net:53", "[2001:db8::1]:65535"} {
		if err := CheckAddr(addr); err != nil {
			t.Errorf("CheckAddr(%q) = %v, want nil", addr, err)
		}
	}
	for addr, says := range map[string]string{
		"0.0.0.0:99999":    `port "99999" is not a number from 0 to 65535`,
		"0.0.0.0":          "want HOST:PORT",
		"0.0.0.0:dns":      `port "dns" is not a number`,
		"bad..host:53":     `"bad..host" is neither an IP address nor a host name`,
		"2001:db8::1:53":   "want HOST:PORT",
		"under_score.x:53": "neither an IP address nor a host name",
	} {
		err := CheckAddr(addr)
		if err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("CheckAddr(%q) = %v, want an error saying %q", addr, err, says)
		}
	}
	if _, err := Bind(Config{Addr: "127.0.0.1:99999"}); err == nil || !strings.Contains(err.Error(), "not a number from 0 to 65535") {
		t.Errorf("Bind with port 99999: %v, want CheckAddr's refusal", err)
	}
}
