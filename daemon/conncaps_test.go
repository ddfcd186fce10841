package daemon

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/nasreach/nasreach/api"
	"github.com/nasreach/nasreach/internal/connlimit"
	"github.com/nasreach/nasreach/metrics"
)

// production is the set-up the README's production example runs: every
// TCP listener, TURN with its default allocations, and TLS.
var production = Config{
	HTTPAddr: "127.0.0.1:10080", DNSAddr: "0.0.0.0:53",
	TURN:     TURNConfig{Addr: "0.0.0.0:3478", Enabled: true},
	CertFile: "/etc/nasreach/fullchain.pem", KeyFile: "/etc/nasreach/privkey.pem",
	Link: LinkConfig{Addr: "0.0.0.0:7443", TCPAddr: "0.0.0.0:443"},
}

func TestConnCapsAreSizedFromTheFileLimit(t *testing.T) {
	noTLS := production
	noTLS.CertFile, noTLS.KeyFile = "", ""
	stunOnly := noTLS
	stunOnly.TURN.Enabled = false
	fewAllocations := production
	fewAllocations.TURN.MaxAllocations = 100
	bare := Config{HTTPAddr: "127.0.0.1:0", DNSAddr: "127.0.0.1:0"}
	manyAgents := bare
	manyAgents.Link.MaxAgents = 5000
	for _, tc := range []struct {
		name                                 string
		limit                                uint64
		cfg                                  Config
		http, dns, stream, tls, lnk, linkTCP int
		short                                uint64
	}{
		// (65536 - 512 - 10000) / 5 listeners
		{"the unit's limit, production", 65536, production, 11004, 11004, 11004, 11004, 4000, 11004, 0},
		{"without TLS", 65536, noTLS, 13756, 13756, 13756, 0, 4000, 13756, 0},
		{"STUN without TURN: no relay sockets", 65536, stunOnly, 16256, 16256, 16256, 0, 4000, 16256, 0},
		{"the issue's limit", 20000, production, 1897, 1897, 1897, 1897, 4000, 1897, 0},
		{"fewer allocations leave more", 20000, fewAllocations, 3877, 3877, 3877, 3877, 4000, 3877, 0},
		{"HTTP and DNS only", 1024, bare, 256, 256, 0, 0, 4000, 0, 0},
		{"Link follows its agent limit", 1024, manyAgents, 256, 256, 0, 0, 20000, 0, 0},
		// 512 + 10000 + 5 * 64 = 10832 needed
		{"a limit too low for TURN's allocations", 4096, production, 64, 64, 64, 64, 4000, 64, 10832 - 4096},
		{"an unlimited limit is bounded", ^uint64(0), bare, (1<<20 - 512) / 2, (1<<20 - 512) / 2, 0, 0, 4000, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := sizeConnCaps(tc.limit, tc.cfg)
			got := []int{c.http.Max, c.dns.Max, c.stream.Max, c.turns.Max, c.link.Max, c.linkTCP.Max}
			want := []int{tc.http, tc.dns, tc.stream, tc.tls, tc.lnk, tc.linkTCP}
			for i, name := range []string{"http", "dns", "stun/turn", "turns", "link", "link-tcp"} {
				if got[i] != want[i] {
					t.Errorf("%s cap %d, want %d", name, got[i], want[i])
				}
			}
			if c.short != tc.short {
				t.Errorf("short by %d descriptors, want %d", c.short, tc.short)
			}
			// What the caps may hold, with TURN's relay sockets and the
			// reserve, never exceeds the limit unless the daemon warns.
			sum := uint64(c.http.Max + c.dns.Max + c.stream.Max + c.turns.Max + c.linkTCP.Max + reservedFDs)
			if tc.cfg.TURN.Enabled && tc.cfg.TURN.Addr != "" {
				sum += uint64(max(tc.cfg.TURN.MaxAllocations, 0))
				if tc.cfg.TURN.MaxAllocations == 0 {
					sum += 10000
				}
			}
			if c.short == 0 && sum > min(tc.limit, maxFileLimit) {
				t.Errorf("caps and reserve add up to %d, over the file limit %d", sum, tc.limit)
			}
		})
	}
}

// The reserve covers the connections of the listeners that are capped
// outside the arithmetic, with room to spare for everything else.
func TestReserveCoversTheFixedCaps(t *testing.T) {
	if fixed := metrics.MaxConns + api.MaxLocalConns; reservedFDs < 2*fixed+128 {
		t.Errorf("reservedFDs %d leaves little beside the metrics' and local socket's %d connections", reservedFDs, fixed)
	}
}

// The shipped unit's LimitNOFILE is the limit the README and conncaps.go
// give figures for: every listener its share, none short.
func TestUnitFileLimitGivesEveryListenerItsShare(t *testing.T) {
	b, err := os.ReadFile("../dist/systemd/nasreach.service")
	if err != nil {
		t.Fatal(err)
	}
	var limit uint64
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "LimitNOFILE="); ok {
			if limit, err = strconv.ParseUint(v, 10, 64); err != nil {
				t.Fatalf("LimitNOFILE=%s: %v", v, err)
			}
		}
	}
	if limit == 0 {
		t.Fatal("the unit sets no LimitNOFILE=: the caps would be sized from systemd's default hard limit (524288), far beyond the figures documented")
	}
	c := sizeConnCaps(limit, production)
	if c.short != 0 || c.http.Max != 11004 || connlimit.PerSource(c.http.Max) != 110 {
		t.Errorf("LimitNOFILE=%d gives %d connections per listener, %d per source (short %d); conncaps.go and the README say 11,004 and 110 for 65536",
			limit, c.http.Max, connlimit.PerSource(c.http.Max), c.short)
	}
}
