package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// checkAnswers asks server at addr each query once and compares the answer
// with the generated data: a benchmark of wrong answers measures nothing. want
// gives the address a hit must return (the loaded one, or the updated one).
func checkAnswers(ctx context.Context, name, addr string, qs []query, want func(q query) netip.Addr) error {
	c := &dns.Client{Timeout: 2 * time.Second}
	for _, q := range qs {
		qtype := dns.TypeA
		if q.Kind == hitAAAA {
			qtype = dns.TypeAAAA
		}
		m := new(dns.Msg)
		m.SetQuestion(q.Name, qtype)
		m.RecursionDesired = false
		r, _, err := c.ExchangeContext(ctx, m, addr)
		if err != nil {
			return fmt.Errorf("%s: %s %s: %w", name, q.Name, dns.TypeToString[qtype], err)
		}
		if err := checkAnswer(r, q, qtype, want); err != nil {
			return fmt.Errorf("%s: %s %s: %w\n%s", name, q.Name, dns.TypeToString[qtype], err, r)
		}
	}
	return nil
}

func checkAnswer(r *dns.Msg, q query, qtype uint16, want func(q query) netip.Addr) error {
	if !r.Authoritative {
		return fmt.Errorf("answer is not authoritative")
	}
	if q.Kind == miss {
		if r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
			return fmt.Errorf("want NXDOMAIN, got %s with %d answers", dns.RcodeToString[r.Rcode], len(r.Answer))
		}
		if len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA {
			return fmt.Errorf("NXDOMAIN without exactly one SOA in the authority section")
		}
		return nil
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		return fmt.Errorf("want NOERROR with one answer, got %s with %d", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	rr := r.Answer[0]
	var got netip.Addr
	switch v := rr.(type) {
	case *dns.A:
		got, _ = netip.AddrFromSlice(v.A.To4())
	case *dns.AAAA:
		got, _ = netip.AddrFromSlice(v.AAAA)
	}
	if rr.Header().Rrtype != qtype || got != want(q) || rr.Header().Ttl != zoneTTL {
		return fmt.Errorf("want %s %s TTL %d, got %s", dns.TypeToString[qtype], want(q), zoneTTL, rr)
	}
	return nil
}
