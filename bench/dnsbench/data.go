package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
)

// device is one generated device: its label and the addresses it is loaded with.
type device struct {
	Name string
	IPv4 netip.Addr
	IPv6 netip.Addr
}

// Address plan. Loaded IPv4 addresses count up from ipv4Base+1; the dyndns2
// phase moves device i to ipv4Base+ipv4UpdateOffset+1+i, so every update is a
// real change (an unchanged address would cost no commit and prove nothing).
// 100.64.0.0/10 (shared address space, what a NAS behind CGNAT reports) holds
// 4M addresses, hence maxDevices.
var ipv4Base = binary.BigEndian.Uint32(netip.MustParseAddr("100.64.0.0").AsSlice())

const (
	ipv4UpdateOffset = 1 << 21
	maxDevices       = ipv4UpdateOffset - 2
)

// labelPrefixes make the generated names look like what owners pick; the
// random suffix makes them unique. No prefix is "nx", so nxLabel never collides.
var labelPrefixes = []string{
	"nas", "home", "office", "media", "backup", "family", "studio", "cloud",
	"photos", "vault", "qnap", "ts453d", "storage", "plex", "archive", "lab",
}

// genDevices returns n devices with distinct labels and addresses; the same
// seed gives the same devices.
func genDevices(n int, seed uint64) []device {
	r := rand.New(rand.NewPCG(seed, 1))
	seen := make(map[string]struct{}, n)
	out := make([]device, 0, n)
	for len(out) < n {
		name := labelPrefixes[r.IntN(len(labelPrefixes))] + "-" + strconv.FormatUint(r.Uint64N(1<<40), 36)
		if _, dup := seen[name]; dup {
			continue
		}
		seen[name] = struct{}{}
		i := uint32(len(out))
		out = append(out, device{Name: name, IPv4: addr4(ipv4Base + 1 + i), IPv6: addr6(uint64(i) + 1)})
	}
	return out
}

// updatedIPv4 is the address the dyndns2 phase gives device i.
func updatedIPv4(i int) netip.Addr { return addr4(ipv4Base + ipv4UpdateOffset + 1 + uint32(i)) }

func addr4(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// addr6 puts v in the low 64 bits of 2001:db8::/64 (the documentation prefix).
func addr6(v uint64) netip.Addr {
	b := netip.MustParseAddr("2001:db8::").As16()
	binary.BigEndian.PutUint64(b[8:], v)
	return netip.AddrFrom16(b)
}

// queryKind is one part of the query mix.
type queryKind int

const (
	hitA queryKind = iota
	hitAAAA
	miss
)

// query is one line of the dnsperf input, with the answer it must get.
type query struct {
	Kind   queryKind
	Name   string // FQDN with trailing dot
	Device int    // index into the devices, -1 for a miss
}

// genQueries returns n queries, shuffled: 80 % A for existing devices, 10 %
// AAAA for existing devices, 10 % names that do not exist (NXDOMAIN). Devices
// are picked uniformly, so the working set is the whole table.
func genQueries(n int, devs []device, zone string, seed uint64) []query {
	r := rand.New(rand.NewPCG(seed, 2))
	out := make([]query, 0, n)
	nA, nAAAA := n*8/10, n/10
	for i := range n {
		switch {
		case i < nA:
			d := r.IntN(len(devs))
			out = append(out, query{Kind: hitA, Name: devs[d].Name + "." + zone + ".", Device: d})
		case i < nA+nAAAA:
			d := r.IntN(len(devs))
			out = append(out, query{Kind: hitAAAA, Name: devs[d].Name + "." + zone + ".", Device: d})
		default:
			out = append(out, query{Kind: miss, Name: nxLabel(r) + "." + zone + ".", Device: -1})
		}
	}
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func nxLabel(r *rand.Rand) string { return "nx-" + strconv.FormatUint(r.Uint64N(1<<40), 36) }

// writeQueryFile writes qs in dnsperf's input format, "name type" per line.
func writeQueryFile(path string, qs []query) error {
	return writeFile(path, func(w *bufio.Writer) error {
		for _, q := range qs {
			t := "A"
			if q.Kind == hitAAAA {
				t = "AAAA"
			}
			if _, err := fmt.Fprintf(w, "%s %s\n", q.Name, t); err != nil {
				return err
			}
		}
		return nil
	})
}

// Zone parameters, equal to what nasreach serves with its defaults (ns1 with
// glue 127.0.0.1, SOA timers, TTL 60 s) so that the peers send the same
// answers, byte for byte in size.
const (
	zoneTTL    = 60
	zoneSOATTL = 3600
)

// writeZoneFile writes the devices as an RFC 1035 master file for the peers.
func writeZoneFile(path, zone string, serial uint32, devs []device) error {
	return writeFile(path, func(w *bufio.Writer) error {
		fmt.Fprintf(w, "$ORIGIN %s.\n$TTL %d\n", zone, zoneTTL)
		fmt.Fprintf(w, "@ %d IN SOA ns1.%s. hostmaster.%s. %d 1800 300 1209600 %d\n", zoneSOATTL, zone, zone, serial, zoneTTL)
		fmt.Fprintf(w, "@ %d IN NS ns1.%s.\n", zoneSOATTL, zone)
		fmt.Fprintf(w, "ns1 %d IN A 127.0.0.1\n", zoneSOATTL)
		for _, d := range devs {
			if _, err := fmt.Fprintf(w, "%s IN A %s\n%s IN AAAA %s\n", d.Name, d.IPv4, d.Name, d.IPv6); err != nil {
				return err
			}
		}
		return nil
	})
}

func writeFile(path string, fill func(*bufio.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	err = fill(w)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
