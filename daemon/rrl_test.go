package daemon_test

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/daemon/daemontest"
	"github.com/nasreach/nasreach/internal/testutil"
)

// burst sends n SOA queries at once over UDP and counts the replies: full
// answers and slipped ones (empty, TC set).
func burst(t *testing.T, td *daemontest.Daemon, n int) (answered, slipped int) {
	t.Helper()
	conn, err := net.Dial("udp", td.DNS)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range n {
		q := new(dns.Msg).SetQuestion(daemontest.Zone+".", dns.TypeSOA)
		q.Id = uint16(i)
		b, _ := q.Pack()
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 1500)
	for {
		conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		k, err := conn.Read(buf)
		if err != nil {
			return answered, slipped
		}
		m := new(dns.Msg)
		if m.Unpack(buf[:k]) != nil {
			t.Fatalf("reply does not unpack: %x", buf[:k])
		}
		if m.Truncated {
			slipped++
		} else if len(m.Answer) == 1 {
			answered++
		}
	}
}

// Rate limiting as the daemon runs it: configured from its settings,
// counted in /metrics by action, changed by a reload.
func TestRRLLimitsCountsInMetricsAndReloads(t *testing.T) {
	td := daemontest.Start(t, func(c *daemon.Config) {
		c.RRL = daemon.RRLConfig{Rate: 5, Slip: 2} // loopback not exempt
	})
	answered, slipped := burst(t, td, 41)
	if answered != 5 || slipped != 18 {
		t.Errorf("41 queries at once at rate 5, slip 2: %d answered, %d slipped; want 5 and 18", answered, slipped)
	}
	var fams map[string][]labelled
	testutil.WaitFor(t, 5*time.Second, "the limited answers in /metrics", func() bool {
		fams, _ = scrape(t, td)
		d, _ := lookup(fams, "nasreach_dns_rrl_total", map[string]string{"action": "dropped"})
		return d > 0
	})
	for action, want := range map[string]float64{"dropped": 18, "slipped": 18} {
		if got := value(t, fams, "nasreach_dns_rrl_total", map[string]string{"action": action}); got != want {
			t.Errorf("nasreach_dns_rrl_total{action=%q} = %v, want %v", action, got, want)
		}
	}

	next := td.Daemon.Config()
	next.RRL.Exempt = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	applied, restart := td.Daemon.Reload(next)
	if !slices.Equal(applied, []string{"rrl-exempt"}) || len(restart) != 0 {
		t.Errorf("reload applied %v and needs a restart for %v; want rrl-exempt applied", applied, restart)
	}
	if answered, _ := burst(t, td, 41); answered != 41 {
		t.Errorf("after exempting loopback: %d of 41 answered", answered)
	}
	next.RRL = daemon.RRLConfig{Rate: -1}
	if applied, _ := td.Daemon.Reload(next); len(applied) != 0 || td.Daemon.Config().RRL.Rate != 5 {
		t.Errorf("a negative rate was applied (%v, rate now %d)", applied, td.Daemon.Config().RRL.Rate)
	}
}

func TestRRLSettingsAreChecked(t *testing.T) {
	for _, c := range []struct {
		rrl     daemon.RRLConfig
		setting string
	}{
		{daemon.RRLConfig{Rate: -1}, "rrl-rate"},
		{daemon.RRLConfig{NXDomainRate: 2_000_000}, "rrl-nxdomain-rate"},
		{daemon.RRLConfig{ErrorRate: -5}, "rrl-error-rate"},
		{daemon.RRLConfig{Slip: 101}, "rrl-slip"},
	} {
		cfg := daemon.Config{DataDir: t.TempDir(), RRL: c.rrl}
		var se *daemon.SettingError
		if err := cfg.Validate(); !errors.As(err, &se) || se.Setting != c.setting {
			t.Errorf("%+v: %v, want an error about %s", c.rrl, err, c.setting)
		}
	}
}
