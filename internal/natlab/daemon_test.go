package natlab_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nasreach/nasreach/internal/natlab"
	"github.com/nasreach/nasreach/internal/testutil"
	"github.com/nasreach/nasreach/stun"
)

// TestDaemonInTheInternetSeesTheHomesPublicAddress runs the real nasreach
// binary in the internet namespace, on the addresses production would use,
// and checks that a STUN Binding from a host behind a Masquerade router is
// answered with the router's WAN address, not the host's LAN address.
func TestDaemonInTheInternetSeesTheHomesPublicAddress(t *testing.T) {
	lab := natlab.New(t) // first: it skips without root, before the build
	bin := testutil.BuildNasreach(t)
	home := lab.AddHome(natlab.Masquerade)
	stunAddr := netip.AddrPortFrom(natlab.InternetA, 3478)
	linkAddr := netip.AddrPortFrom(natlab.InternetA, 7443)

	// DNS, HTTP and metrics keep their loopback defaults: the namespace
	// has a loopback of its own.
	out, exited := run(t, lab.Internet.Command(bin, "serve", "--data", t.TempDir(), "--log-format", "json",
		"--stun", stunAddr.String(), "--link", linkAddr.String()))

	// The client retransmits until the daemon has bound its port.
	host := home.Host()
	conn := host.ListenUDP(t, netip.AddrPortFrom(host.Addr, 0))
	client, err := stun.NewClient(stun.ClientConfig{RTO: 100 * time.Millisecond, Rc: 100, Rm: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	mapped, err := client.Discover(ctx, conn, stunAddr)
	select {
	case err := <-exited:
		t.Fatalf("nasreach serve exited: %v\n%s", err, out.String())
	default:
	}
	if err != nil {
		t.Fatalf("STUN Binding to the daemon at %s: %v\n%s", stunAddr, err, out.String())
	}
	local := conn.LocalAddr().String()
	if mapped.Addr() != home.WAN {
		t.Errorf("the daemon saw %s (the host is %s), want the router's WAN address %s", mapped, local, home.WAN)
	}
	if !strings.Contains(out.String(), linkAddr.String()) {
		t.Errorf("the daemon's log does not name the Link address %s:\n%s", linkAddr, out.String())
	}
	t.Logf("host %s → daemon saw %s", local, mapped)
}
