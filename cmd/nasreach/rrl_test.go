package main

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/nasreach/nasreach/daemon"
	"github.com/nasreach/nasreach/dnsserver"
)

func TestRRLIsOnByDefaultAndLoopbackExempt(t *testing.T) {
	cfg, err := parseServeConfig(context.Background(), []string{"nasreach", "serve"})
	if err != nil {
		t.Fatal(err)
	}
	want := daemon.RRLConfig{Rate: 100, NXDomainRate: 50, ErrorRate: 20, Slip: 2, Exempt: dnsserver.DefaultRRLExempt()}
	if got := cfg.RRL; got.Rate != want.Rate || got.NXDomainRate != want.NXDomainRate || got.ErrorRate != want.ErrorRate ||
		got.Slip != want.Slip || !slices.Equal(got.Exempt, want.Exempt) {
		t.Errorf("default RRL %+v, want %+v", got, want)
	}
}

func TestRRLFlagsAndConfigKeys(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		args   []string
		file   string
		exempt []string // nil: none
		rate   int
	}{
		{args: []string{"--rrl-exempt", "none"}, rate: 100},
		{args: []string{"--rrl-exempt", "192.0.2.0/24", "--rrl-exempt", "2001:db8::53"}, exempt: []string{"192.0.2.0/24", "2001:db8::53/128"}, rate: 100},
		{file: "rrl-exempt = [\"none\"]\nrrl-rate = 0\n"},
		{file: "rrl-exempt = [\"10.0.0.0/8\"]\nrrl-rate = 1000\n", exempt: []string{"10.0.0.0/8"}, rate: 1000},
	} {
		args := append([]string{"nasreach", "serve"}, c.args...)
		if c.file != "" {
			args = append(args, "--config", writeConfig(t, c.file))
		}
		cfg, err := parseServeConfig(ctx, args)
		if err != nil {
			t.Errorf("%v %q: %v", c.args, c.file, err)
			continue
		}
		var got []string
		for _, p := range cfg.RRL.Exempt {
			got = append(got, p.String())
		}
		if !slices.Equal(got, c.exempt) || cfg.RRL.Rate != c.rate || cfg.RRL.NXDomainRate != dnsserver.DefaultRRLNXDomainRate {
			t.Errorf("%v %q: exempt %v, rates %+v; want exempt %v, rate %d", c.args, c.file, got, cfg.RRL, c.exempt, c.rate)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--rrl-rate", "-1"}, "RRL rate -1"},
		{[]string{"--rrl-slip", "101"}, "RRL slip 101"},
		{[]string{"--rrl-exempt", "nonsense"}, `--rrl-exempt "nonsense"`},
		{[]string{"--rrl-exempt", "none", "--rrl-exempt", "10.0.0.0/8"}, `--rrl-exempt "none"`},
	} {
		_, err := parseServeConfig(ctx, append([]string{"nasreach", "serve"}, c.args...))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error saying %s", c.args, err, c.want)
		}
	}
}
