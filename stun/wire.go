// Package stun answers STUN Binding requests so that a client behind a NAT
// learns the public address and port its packets come from, and discovers that
// address as a client. The server is anonymous: it keeps nothing about the
// requests it answers and logs nothing but counters.
//
// # Wire format (RFC 8489 §5, §14; RFC 3489 §11 for the classic form)
//
// Every message starts with a 20-byte header, then attributes:
//
//	0                   1                   2                   3
//	0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	|0 0|     message type (14b)    |      message length (16b)     |
//	|                 magic cookie 0x2112A442 (32b)                 |
//	|                   transaction ID (96b)                        |
//
// The message length counts the attribute bytes only and is a multiple of 4.
// A classic RFC 3489 message has no magic cookie: bytes 4–19 are a 128-bit
// transaction ID. Each attribute is a 2-byte type, a 2-byte value length, and
// the value padded with zeros to a multiple of 4. Types below 0x8000 are
// comprehension-required: a server that does not know one answers 420 with
// UNKNOWN-ATTRIBUTES.
//
// What this server accepts and answers:
//
//   - Binding request (type 0x0001), at most MaxRequestSize bytes. Over UDP
//     the datagram must be exactly one message. If FINGERPRINT (0x8028) is
//     present it must be the last attribute and match, else the request is
//     dropped. Anything else — other methods, indications, responses, a
//     truncated or padded-out message, an attribute running past the end —
//     is dropped without a reply.
//   - Success response (0x0101) to an RFC 8489/5389 request:
//     XOR-MAPPED-ADDRESS (0x0020), SOFTWARE (0x8022) only if configured,
//     FINGERPRINT (0x8028) last.
//   - Success response to a classic request: MAPPED-ADDRESS (0x0001) only,
//     the one attribute RFC 3489 clients read.
//   - Error response (0x0111) 420 Unknown Attribute with UNKNOWN-ATTRIBUTES
//     (0x000A) for comprehension-required attributes this server does not
//     know, including CHANGE-REQUEST (0x0003) asking for another address or
//     port, which a single-address server cannot honour (RFC 5780 §7.2).
//
// XOR-MAPPED-ADDRESS is 0x00, family (0x01 IPv4, 0x02 IPv6), port XOR 0x2112,
// then the address XOR the magic cookie (IPv4) or XOR the cookie followed by
// the transaction ID (IPv6). MAPPED-ADDRESS is the same layout without the XOR.
// An IPv4-mapped IPv6 source (from a dual-stack socket) is reported as IPv4.
package stun

import (
	"encoding/binary"
	"hash/crc32"
	"net/netip"
)

// Sizes and limits of the wire format.
const (
	// HeaderSize is the size of the STUN message header.
	HeaderSize = 20
	// MaxRequestSize bounds the requests this server parses; a Binding
	// request is a header and a few short attributes.
	MaxRequestSize = 1280
	// MaxSoftwareLen is the longest SOFTWARE value (RFC 8489 §14.14 allows
	// 763 bytes; a product name and version need far fewer).
	MaxSoftwareLen = 128

	magicCookie      = 0x2112A442
	fingerprintXOR   = 0x5354554e
	typeBindingReq   = 0x0001
	typeBindingOK    = 0x0101
	typeBindingError = 0x0111

	attrMappedAddress    = 0x0001
	attrChangeRequest    = 0x0003
	attrUsername         = 0x0006
	attrMessageIntegrity = 0x0008
	attrErrorCode        = 0x0009
	attrUnknownAttrs     = 0x000A
	attrRealm            = 0x0014
	attrNonce            = 0x0015
	attrMIS256           = 0x001C
	attrUserhash         = 0x001E
	attrXORMapped        = 0x0020
	attrPriority         = 0x0024
	attrUseCandidate     = 0x0025
	attrPadding          = 0x0026
	attrResponsePort     = 0x0027
	attrSoftware         = 0x8022
	attrFingerprint      = 0x8028

	codeUnknownAttribute = 420
	// maxUnknownReported bounds UNKNOWN-ATTRIBUTES in a 420 answer.
	maxUnknownReported = 16
)

// knownRequired are the comprehension-required attributes a Binding request
// may carry that this server understands well enough to ignore: credentials
// and ICE attributes (this server does not authenticate Binding), RFC 5780
// padding and response port. CHANGE-REQUEST is checked separately.
var knownRequired = map[uint16]bool{
	attrMappedAddress: true, attrUsername: true, attrMessageIntegrity: true,
	attrRealm: true, attrNonce: true, attrMIS256: true, attrUserhash: true,
	attrXORMapped: true, attrPriority: true, attrUseCandidate: true,
	attrPadding: true, attrResponsePort: true,
}

// request is a parsed Binding request.
type request struct {
	classic bool     // RFC 3489: no magic cookie
	id      [16]byte // transaction ID: bytes 4–19 (cookie included when modern)
	unknown []uint16 // comprehension-required attributes not understood
}

// IsMessage reports whether b looks like a STUN message of either form: the
// two top bits are zero and the length fits. It is the cheap check a demuxer
// uses before handing b to Answer; it does not validate attributes.
func IsMessage(b []byte) bool {
	return len(b) >= HeaderSize && b[0]&0xC0 == 0 &&
		int(binary.BigEndian.Uint16(b[2:4]))+HeaderSize == len(b)
}

// parseRequest parses a Binding request. ok is false for anything that must be
// dropped without an answer.
func parseRequest(b []byte) (req request, ok bool) {
	if len(b) < HeaderSize || len(b) > MaxRequestSize || !IsMessage(b) {
		return req, false
	}
	if binary.BigEndian.Uint16(b[0:2]) != typeBindingReq {
		return req, false
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n%4 != 0 {
		return req, false
	}
	req.classic = binary.BigEndian.Uint32(b[4:8]) != magicCookie
	copy(req.id[:], b[4:20])
	attrs := b[HeaderSize:]
	for off := 0; off < len(attrs); {
		if len(attrs)-off < 4 {
			return req, false
		}
		typ := binary.BigEndian.Uint16(attrs[off:])
		vlen := int(binary.BigEndian.Uint16(attrs[off+2:]))
		end := off + 4 + (vlen+3)&^3
		if end > len(attrs) {
			return req, false
		}
		val := attrs[off+4 : off+4+vlen]
		switch {
		case typ == attrFingerprint && !req.classic:
			if vlen != 4 || end != len(attrs) {
				return req, false
			}
			want := crc32.ChecksumIEEE(b[:HeaderSize+off]) ^ fingerprintXOR
			if binary.BigEndian.Uint32(val) != want {
				return req, false
			}
		case typ == attrChangeRequest:
			// Flags 0 ask for nothing to change; RFC 3489 clients send that.
			if vlen != 4 || binary.BigEndian.Uint32(val)&0x6 != 0 {
				req.unknown = appendUnknown(req.unknown, typ)
			}
		case typ < 0x8000 && !knownRequired[typ]:
			req.unknown = appendUnknown(req.unknown, typ)
		}
		off = end
	}
	return req, true
}

func appendUnknown(u []uint16, t uint16) []uint16 {
	if len(u) < maxUnknownReported {
		u = append(u, t)
	}
	return u
}

// appendResponse appends the answer to req for a client seen at from.
func appendResponse(dst []byte, req request, from netip.AddrPort, software string) []byte {
	start := len(dst)
	typ := uint16(typeBindingOK)
	if len(req.unknown) > 0 {
		typ = typeBindingError
	}
	dst = binary.BigEndian.AppendUint16(dst, typ)
	dst = append(dst, 0, 0) // length, set below
	dst = append(dst, req.id[:]...)
	addr := from.Addr().Unmap()
	switch {
	case len(req.unknown) > 0:
		// ERROR-CODE: 2 reserved bytes, class (hundreds), number, reason.
		reason := "Unknown Attribute"
		dst = appendAttrHeader(dst, attrErrorCode, 4+len(reason))
		dst = append(dst, 0, 0, codeUnknownAttribute/100, codeUnknownAttribute%100)
		dst = appendPadded(dst, []byte(reason))
		dst = appendAttrHeader(dst, attrUnknownAttrs, 2*len(req.unknown))
		var v []byte
		for _, t := range req.unknown {
			v = binary.BigEndian.AppendUint16(v, t)
		}
		dst = appendPadded(dst, v)
	case req.classic:
		dst = appendAddress(dst, attrMappedAddress, addr, from.Port(), nil)
	default:
		dst = appendAddress(dst, attrXORMapped, addr, from.Port(), req.id[:])
	}
	if software != "" && !req.classic {
		dst = appendAttrHeader(dst, attrSoftware, len(software))
		dst = appendPadded(dst, []byte(software))
	}
	if !req.classic {
		// FINGERPRINT covers the message with its length already counting
		// the FINGERPRINT attribute itself.
		binary.BigEndian.PutUint16(dst[start+2:], uint16(len(dst)-start-HeaderSize+8))
		crc := crc32.ChecksumIEEE(dst[start:]) ^ fingerprintXOR
		dst = appendAttrHeader(dst, attrFingerprint, 4)
		dst = binary.BigEndian.AppendUint32(dst, crc)
	}
	binary.BigEndian.PutUint16(dst[start+2:], uint16(len(dst)-start-HeaderSize))
	return dst
}

func appendAttrHeader(dst []byte, typ uint16, n int) []byte {
	dst = binary.BigEndian.AppendUint16(dst, typ)
	return binary.BigEndian.AppendUint16(dst, uint16(n))
}

func appendPadded(dst, v []byte) []byte {
	dst = append(dst, v...)
	for i := len(v); i%4 != 0; i++ {
		dst = append(dst, 0)
	}
	return dst
}

// appendAddress appends a (XOR-)MAPPED-ADDRESS; xor is the cookie and
// transaction ID for XOR-MAPPED-ADDRESS, nil for MAPPED-ADDRESS.
func appendAddress(dst []byte, typ uint16, a netip.Addr, port uint16, xor []byte) []byte {
	ip := a.AsSlice()
	family := byte(0x01)
	if a.Is6() {
		family = 0x02
	}
	if xor != nil {
		port ^= magicCookie >> 16
		for i := range ip {
			ip[i] ^= xor[i]
		}
	}
	dst = appendAttrHeader(dst, typ, 4+len(ip))
	dst = append(dst, 0, family)
	dst = binary.BigEndian.AppendUint16(dst, port)
	return append(dst, ip...)
}
