package store

import (
	"net/netip"
	"unsafe"
)

// scanIndexFields reads the fields of a device record that its index entry
// is made of straight from the JSON putDevice writes, without reflection:
// the name, the addresses and the DDNS switch, skipping (and checking) every
// other field. ok is false where the record holds anything it does not read
// itself — ACME challenge values or a TSIG key (few devices have them), a
// needed field of another type or with an escape, a key that differs from
// a needed one only in case, anything that is not JSON — and the caller
// decodes the record in full. Where ok is true, encoding/json makes the same
// indexFields of v (FuzzScanIndexFields checks it).
func scanIndexFields(v []byte) (f indexFields, ok bool) {
	s := scanner{b: v}
	if !s.byte('{') {
		return f, false
	}
	if s.peek() == '}' {
		s.i++
		return f, s.end()
	}
	for {
		key, ok := s.plainString()
		if !ok || !s.byte(':') {
			return f, false
		}
		switch string(key) {
		case "name":
			name, ok := s.plainString()
			if !ok {
				return f, false
			}
			f.Name = string(name)
		case "ipv4", "ipv6":
			text, ok := s.plainString()
			if !ok || len(text) == 0 {
				return f, false
			}
			a, err := netip.ParseAddr(unsafe.String(&text[0], len(text)))
			if err != nil {
				return f, false
			}
			if key[3] == '4' {
				f.IPv4 = a
			} else {
				f.IPv6 = a
			}
		case "ddns":
			switch {
			case s.literal("true"):
				f.DDNS = true
			case s.literal("false"):
				f.DDNS = false
			default:
				return f, false
			}
		case "acme_challenges", "tsig_key":
			if !s.literal("null") && !s.literal("[]") {
				return f, false
			}
		default:
			for _, k := range [...]string{"name", "ipv4", "ipv6", "ddns", "acme_challenges", "tsig_key"} {
				if len(k) == len(key) && equalFold(k, key) {
					return f, false // encoding/json would take it as k
				}
			}
			if !s.value(0) {
				return f, false
			}
		}
		switch {
		case s.byte(','):
		case s.byte('}'):
			return f, s.end()
		default:
			return f, false
		}
	}
}

// equalFold reports whether key is k (lower-case ASCII) in any case.
func equalFold(k string, key []byte) bool {
	for i := range len(k) {
		c := key[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != k[i] {
			return false
		}
	}
	return true
}

// scanner reads JSON from b at i.
type scanner struct {
	b []byte
	i int
}

// maxDepth bounds the nesting value follows, as encoding/json bounds its
// own (deeper records are left to it).
const maxDepth = 64

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) peek() byte {
	s.space()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// byte consumes c after any space.
func (s *scanner) byte(c byte) bool {
	if s.peek() == c && s.i < len(s.b) {
		s.i++
		return true
	}
	return false
}

// end reports whether only space is left.
func (s *scanner) end() bool {
	s.space()
	return s.i == len(s.b)
}

// literal consumes lit (true, false, null, []) after any space.
func (s *scanner) literal(lit string) bool {
	s.space()
	if len(s.b)-s.i >= len(lit) && string(s.b[s.i:s.i+len(lit)]) == lit {
		s.i += len(lit)
		return true
	}
	return false
}

// plainString consumes a string without escapes and returns its bytes.
func (s *scanner) plainString() ([]byte, bool) {
	if !s.byte('"') {
		return nil, false
	}
	start := s.i
	for ; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; {
		case c == '"':
			s.i++
			return s.b[start : s.i-1], true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, false // escapes and non-ASCII: encoding/json's to read
		}
	}
	return nil, false
}

// value consumes one JSON value of any kind, checking it as encoding/json
// would.
func (s *scanner) value(depth int) bool {
	if depth > maxDepth {
		return false
	}
	switch s.peek() {
	case '"':
		return s.string()
	case '{':
		s.i++
		if s.byte('}') {
			return true
		}
		for {
			if s.peek() != '"' || !s.string() || !s.byte(':') || !s.value(depth+1) {
				return false
			}
			if s.byte('}') {
				return true
			}
			if !s.byte(',') {
				return false
			}
		}
	case '[':
		s.i++
		if s.byte(']') {
			return true
		}
		for {
			if !s.value(depth + 1) {
				return false
			}
			if s.byte(']') {
				return true
			}
			if !s.byte(',') {
				return false
			}
		}
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	default:
		return s.number()
	}
}

// string consumes a string, escapes included.
func (s *scanner) string() bool {
	s.i++ // the opening quote
	for s.i < len(s.b) {
		c := s.b[s.i]
		s.i++
		switch {
		case c == '"':
			return true
		case c < 0x20:
			return false
		case c == '\\':
			if s.i >= len(s.b) {
				return false
			}
			e := s.b[s.i]
			s.i++
			switch e {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(s.b)-s.i < 4 {
					return false
				}
				for _, h := range s.b[s.i : s.i+4] {
					if !isHex(h) {
						return false
					}
				}
				s.i += 4
			default:
				return false
			}
		}
	}
	return false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// number consumes a number as JSON's grammar has it.
func (s *scanner) number() bool {
	digits := func() int {
		n := 0
		for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
			s.i++
			n++
		}
		return n
	}
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	switch {
	case s.i < len(s.b) && s.b[s.i] == '0':
		s.i++
	case digits() == 0:
		return false
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if digits() == 0 {
			return false
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if digits() == 0 {
			return false
		}
	}
	return true
}
