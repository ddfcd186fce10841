package daemontest

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/miekg/dns"
)

// WantAnswer asks name/qtype over net and fails the test unless the daemon
// answers authoritatively with exactly the address want.
func (td *Daemon) WantAnswer(net, name string, qtype uint16, want netip.Addr) {
	td.T.Helper()
	r := td.Query(net, name, qtype)
	if err := CheckAnswer(r, qtype, want); err != nil {
		td.T.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], net, err)
	}
}

// CheckAnswer reports how r differs from an authoritative answer holding
// exactly one record of qtype with address want.
func CheckAnswer(r *dns.Msg, qtype uint16, want netip.Addr) error {
	if r.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("rcode %s, want NOERROR with %s", dns.RcodeToString[r.Rcode], want)
	}
	if !r.Authoritative {
		return errors.New("answer is not authoritative (AA flag clear)")
	}
	if len(r.Answer) != 1 {
		return fmt.Errorf("answer has %d records %v, want one %s %s", len(r.Answer), r.Answer, dns.TypeToString[qtype], want)
	}
	var got netip.Addr
	switch rr := r.Answer[0].(type) {
	case *dns.A:
		got, _ = netip.AddrFromSlice(rr.A.To4())
	case *dns.AAAA:
		got, _ = netip.AddrFromSlice(rr.AAAA)
	}
	if r.Answer[0].Header().Rrtype != qtype || got != want {
		return fmt.Errorf("answer is %v, want %s %s", r.Answer[0], dns.TypeToString[qtype], want)
	}
	return nil
}

// WantNXDOMAIN fails the test unless name is NXDOMAIN over net, with the
// zone's SOA in the authority section so resolvers can cache the denial.
func (td *Daemon) WantNXDOMAIN(net, name string, qtype uint16) {
	td.T.Helper()
	r := td.Query(net, name, qtype)
	if r.Rcode != dns.RcodeNameError {
		td.T.Fatalf("%s %s over %s: rcode %s answer %v, want NXDOMAIN", name, dns.TypeToString[qtype], net, dns.RcodeToString[r.Rcode], r.Answer)
	}
	if len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA || r.Ns[0].Header().Name != Zone+"." {
		td.T.Fatalf("%s NXDOMAIN over %s: authority %v, want the SOA of %s", name, net, r.Ns, Zone)
	}
}
