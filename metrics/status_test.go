package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/connlog"
)

// TestStatusPageShowsTheDaemonAtAGlance fetches / as a browser would and
// checks that it shows what an operator looks for first, taken from the same
// counters /metrics serves.
func TestStatusPageShowsTheDaemonAtAGlance(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	notReady := errors.New("store cannot commit: no space left on device")
	ready := error(nil)
	m, err := New(Config{
		Listener: ln, Version: "v1.2.3",
		Devices: func() int { return 12345 }, Online: func() int { return 7 },
		Sessions:   map[string]func() int{"link": func() int { return 3 }, "turn": func() int { return 2 }},
		LogDropped: func() uint64 { return 9 },
		Ready:      func() error { return ready },
		Listeners: func() []Listener {
			return []Listener{{Name: "DNS (UDP, TCP)", Addr: "127.0.0.1:10053"}, {Name: "<script>", Addr: "x"}}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Shutdown(context.Background()) })
	for range 3 {
		m.ObserveQuery(dns.TypeA, dns.RcodeSuccess)
	}
	m.ObserveQuery(dns.TypeAAAA, dns.RcodeNameError)
	m.ObserveEvent(connlog.Event{Service: "link", Kind: "session", Outcome: "closed", BytesIn: 1000, BytesOut: 500})
	// Accepted updates: changed or not, by dyndns2, REST or RFC 2136.
	for _, e := range []connlog.Event{{Outcome: "good"}, {Outcome: "nochg"}, {Outcome: "badauth"}, {Outcome: "good", Service: "dns"}, {Outcome: "refused", Service: "dns"}} {
		e.Service, e.Kind = cmpOr(e.Service, "ddns"), "update"
		m.ObserveEvent(e)
	}

	get := func() (string, string) {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET / = %s", resp.Status)
		}
		return string(b), resp.Header.Get("Content-Type")
	}
	page, ctype := get()
	if !strings.HasPrefix(ctype, "text/html") {
		t.Errorf("Content-Type %q, want text/html for a browser", ctype)
	}
	for _, want := range []string{
		"version v1.2.3", ">ready<", "DNS (UDP, TCP)</td><td>127.0.0.1:10053",
		"devices registered</td><td>12,345", "devices online (Link agent connected)</td><td>7",
		"Link sessions in progress</td><td>3", "TURN allocations in progress</td><td>2",
		"DNS queries answered</td><td>4", "address updates accepted</td><td>3", "bytes relayed</td><td>1,500", "connection-log events dropped</td><td>9",
		"&lt;script&gt;",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	ready = notReady
	if page, _ := get(); !strings.Contains(page, "not ready: store cannot commit: no space left on device") {
		t.Error("status page does not say why the daemon is not ready")
	}
	resp, err := http.Get("http://" + ln.Addr().String() + "/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nothing = %s, want 404 (only / is the status page)", resp.Status)
	}
}
