package main

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/dnsserver"
	"github.com/urfave/cli/v3"
)

// rrlFlags are serve's flags for DNS response rate limiting (UDP answers
// only; TCP proves the client's address).
func rrlFlags() []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "rrl-rate", Value: dnsserver.DefaultRRLRate, Usage: "DNS answers per second over UDP to one client network (IPv4 /24, IPv6 /56) for one name and type; beyond it answers are dropped or slipped (0: no limit)", Sources: cli.EnvVars("NASREACH_RRL_RATE")},
		&cli.IntFlag{Name: "rrl-nxdomain-rate", Value: dnsserver.DefaultRRLNXDomainRate, Usage: "NXDOMAIN answers per second over UDP to one client network, every name of the zone together (0: no limit)", Sources: cli.EnvVars("NASREACH_RRL_NXDOMAIN_RATE")},
		&cli.IntFlag{Name: "rrl-error-rate", Value: dnsserver.DefaultRRLErrorRate, Usage: "error answers (REFUSED, FORMERR, NOTIMP) per second over UDP to one client network (0: no limit)", Sources: cli.EnvVars("NASREACH_RRL_ERROR_RATE")},
		&cli.IntFlag{Name: "rrl-slip", Value: dnsserver.DefaultRRLSlip, Usage: "every Nth rate-limited answer is sent empty with TC set, so that a real resolver retries over TCP; the others are dropped (0: drop all, 1: truncate all)", Sources: cli.EnvVars("NASREACH_RRL_SLIP")},
		&cli.StringSliceFlag{Name: "rrl-exempt", Usage: "client network (CIDR or address) whose DNS answers are never rate-limited (repeatable; none: no exemption, loopback included)", DefaultText: "127.0.0.0/8 and ::1, loopback", Sources: cli.EnvVars("NASREACH_RRL_EXEMPT")},
	}
}

// rrlConfigFromFlags reads rrlFlags; the daemon checks the ranges.
func rrlConfigFromFlags(cmd *cli.Command) (daemon.RRLConfig, error) {
	c := daemon.RRLConfig{
		Rate: cmd.Int("rrl-rate"), NXDomainRate: cmd.Int("rrl-nxdomain-rate"), ErrorRate: cmd.Int("rrl-error-rate"), Slip: cmd.Int("rrl-slip"),
	}
	var err error
	c.Exempt, err = parseExempt(cmd.StringSlice("rrl-exempt"))
	return c, err
}

// parseExempt reads --rrl-exempt: nothing given is loopback, "none" is
// nobody, else CIDRs and single addresses.
func parseExempt(values []string) ([]netip.Prefix, error) {
	if len(values) == 0 {
		return dnsserver.DefaultRRLExempt(), nil
	}
	if len(values) == 1 && strings.TrimSpace(values[0]) == "none" {
		return []netip.Prefix{}, nil
	}
	var out []netip.Prefix
	for _, v := range values {
		s := strings.TrimSpace(v)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("--rrl-exempt %q: want a CIDR such as 192.0.2.0/24, an address, or none alone", v)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p)
	}
	return out, nil
}
