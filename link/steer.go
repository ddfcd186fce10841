package link

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Link across nodes: several relays ("nodes") serve one zone from one
// device table; each records the agents it holds, and the zone names the
// node holding each device (dnsserver/link.go):
//
//	_nasreach-link._udp.<device>.<zone>  SRV  0 0 <port> _link.<device>.<zone>.
//	_link.<device>.<zone>                A/AAAA  the node's addresses
//
// A Dialer given a Steer looks these up before it connects, and goes
// straight to that node; any node forwards to the right one anyway
// (wire.go, "Across nodes"), so a failed lookup falls back to Server. An
// agent given several relays (AgentConfig.Servers, or a name with several
// addresses of one family) moves to the next when its connection ends, so
// that it leaves a dead node for a live one.

// steerTimeout bounds the DNS lookups of one steering.
const steerTimeout = 2 * time.Second

// Steer says where to look up the node holding a device.
type Steer struct {
	// Zone is the device zone, e.g. myqnapcloud.com. Required.
	Zone string
	// Resolver is the DNS server asked, HOST:PORT (the zone's own
	// nameservers answer these names; a recursive resolver passes them
	// on); empty means the system's resolver.
	Resolver string
}

// resolver returns the resolver for s.
func (s *Steer) resolver() *net.Resolver {
	if s.Resolver == "" {
		return net.DefaultResolver
	}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, s.Resolver)
	}}
}

// lookup returns the UDP addresses of the relay node holding device, in
// the order to try them; none when DNS names none (no agent online, or a
// zone without steering).
func (s *Steer) lookup(ctx context.Context, device string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, steerTimeout)
	defer cancel()
	r := s.resolver()
	name := device + "." + strings.TrimSuffix(s.Zone, ".") + "."
	_, srvs, err := r.LookupSRV(ctx, "nasreach-link", "udp", name)
	if err != nil {
		return nil, fmt.Errorf("look up the relay of %s: %w", device, err)
	}
	var out []string
	for _, srv := range srvs {
		ips, err := r.LookupNetIP(ctx, "ip", srv.Target)
		if err != nil {
			continue
		}
		for _, ip := range ips {
			out = append(out, netip.AddrPortFrom(ip.Unmap(), srv.Port).String())
		}
	}
	return out, nil
}

// at returns a dialer of the same relay cluster at addr (UDP, HOST:PORT):
// the same TLS (the cluster's certificate, checked against the name or pin
// the user gave), the TCP carrier at addr's host and the configured TCP
// port (or addr's port).
func (r *relayDialer) at(addr string) (*relayDialer, error) {
	n := &relayDialer{server: addr, quicTLS: r.quicTLS, tcpTLS: r.tcpTLS, keepAlive: r.keepAlive,
		headStart: r.headStart, retry: r.retry, log: r.log}
	if r.serverTCP == "" {
		return n, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("relay address %q: want HOST:PORT: %w", addr, err)
	}
	if _, tport, err := net.SplitHostPort(r.serverTCP); err == nil && r.serverTCP != r.server {
		port = tport
	}
	n.serverTCP = net.JoinHostPort(host, port)
	return n, nil
}

// relayRing is an agent's relays, tried in turn.
type relayRing struct {
	base    *relayDialer
	servers []string // AgentConfig.Server, then Servers

	mu      sync.Mutex
	next    int
	dialers map[string]*relayDialer
}

// candidates are the relays to try, each HOST:PORT: every server given, a
// name with several addresses of one family (several A records) expanded
// into them. A name with one address per family (localhost) stays a name,
// as a single relay is dialed.
func (rr *relayRing) candidates(ctx context.Context) []string {
	var out []string
	for _, s := range rr.servers {
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			out = append(out, s)
			continue
		}
		if _, err := netip.ParseAddr(host); err == nil {
			out = append(out, s)
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, steerTimeout)
		ips, err := net.DefaultResolver.LookupNetIP(lctx, "ip", host)
		cancel()
		v4, v6 := 0, 0
		for _, ip := range ips {
			if ip.Unmap().Is4() {
				v4++
			} else {
				v6++
			}
		}
		if err != nil || (v4 < 2 && v6 < 2) {
			out = append(out, s)
			continue
		}
		for _, ip := range ips {
			out = append(out, net.JoinHostPort(ip.Unmap().String(), port))
		}
	}
	return out
}

// pick returns the relay to dial now and its address.
func (rr *relayRing) pick(ctx context.Context) (*relayDialer, string, error) {
	cands := rr.candidates(ctx)
	rr.mu.Lock()
	defer rr.mu.Unlock()
	addr := cands[rr.next%len(cands)]
	if len(cands) == 1 && addr == rr.servers[0] {
		return rr.base, addr, nil
	}
	if d := rr.dialers[addr]; d != nil {
		return d, addr, nil
	}
	d, err := rr.base.at(addr)
	if err != nil {
		return nil, addr, err
	}
	rr.dialers[addr] = d
	return d, addr, nil
}

// advance moves to the next relay, after a connection ended.
func (rr *relayRing) advance() {
	rr.mu.Lock()
	rr.next++
	rr.mu.Unlock()
}

// steer returns the relay to dial for a session to device: the node DNS
// names for it when the Dialer steers (and DNS names one), else Server.
func (d *Dialer) steer(ctx context.Context, device string) (*relayDialer, string) {
	if d.cfg.Steer == nil || device == "" {
		return d.relay, d.cfg.Server
	}
	addrs, err := d.cfg.Steer.lookup(ctx, device)
	if err != nil || len(addrs) == 0 {
		d.log.Debug().Err(err).Str("device", device).Msg("no relay node named in DNS; using --server")
		return d.relay, d.cfg.Server
	}
	rd, err := d.relay.at(addrs[0])
	if err != nil {
		return d.relay, d.cfg.Server
	}
	d.log.Info().Str("device", device).Str("relay", addrs[0]).Msg("DNS steers to the relay node holding the device")
	return rd, addrs[0]
}
