package anonymize

import (
	"net/netip"
	"regexp"
	"strings"
)

var (
	emailRE = regexp.MustCompile(`[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}`)
	// runRE finds maximal runs of the characters addresses are made of. A run
	// is masked only if it is an address as a whole, so a match never stops in
	// the middle of a longer token. An IPv6 zone (%eth0) names an interface,
	// not a host, and stays as it is.
	runRE    = regexp.MustCompile(`[0-9A-Fa-f:.]+`)
	dottedRE = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+`)
)

// Text returns s with every e-mail address replaced by "[email]" and every IP
// address masked as Addr does (IPv6 kept to DefaultIPv6Prefix bits).
func Text(s string) string { return TextBits(s, DefaultIPv6Prefix) }

// TextBits is Text with the number of IPv6 bits to keep.
func TextBits(s string, v6bits int) string {
	s = emailRE.ReplaceAllString(s, "[email]")
	return runRE.ReplaceAllStringFunc(s, func(run string) string { return maskRun(run, v6bits) })
}

// maskRun masks one run: an address, an address followed by sentence
// punctuation, or an IPv4 address with a port. A run that is none of these but
// holds a dotted quad (1.2.3.4.5) is replaced whole: which four of its numbers
// are the address cannot be known, so none of them is kept.
func maskRun(run string, v6bits int) string {
	core := strings.TrimRight(run, ".:")
	tail := run[len(core):]
	if a, err := netip.ParseAddr(core); err == nil {
		return AddrBits(a, v6bits).String() + tail
	}
	if host, port, ok := strings.Cut(core, ":"); ok && !strings.Contains(port, ":") {
		if a, err := netip.ParseAddr(host); err == nil && a.Is4() {
			return AddrBits(a, v6bits).String() + ":" + port + tail
		}
	}
	if dottedRE.MatchString(run) {
		return "[addr]"
	}
	return run
}
