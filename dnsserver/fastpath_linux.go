package dnsserver

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fastBatch is the number of datagrams one recvmmsg or sendmmsg moves.
const fastBatch = 32

// fastPathSupported says whether this system has the fast path's socket
// calls (recvmmsg, sendmmsg).
const fastPathSupported = true

// mmsghdr is struct mmsghdr: a msghdr and the length the kernel moved,
// padded to the msghdr's alignment.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [unsafe.Sizeof(uintptr(0)) - 4]byte
}

// fastReader is the one goroutine that reads one UDP socket: it takes a
// batch of queries with recvmmsg, answers those of the fast path's shape
// into a batch of replies sent with sendmmsg, and hands the others to
// miekg/dns. Everything it uses is allocated once, here.
type fastReader struct {
	s    *Server
	conn *net.UDPConn
	rc   syscall.RawConn
	h    *handover

	in     [fastBatch][maxQuerySize]byte
	out    [fastBatch][fastAnswerMax]byte
	names  [fastBatch]unix.RawSockaddrInet6
	oob    [fastBatch][64]byte
	iovIn  [fastBatch]unix.Iovec
	iovOut [fastBatch]unix.Iovec
	rh     [fastBatch]mmsghdr // recvmmsg's
	wh     [fastBatch]mmsghdr // sendmmsg's
	ws     []mmsghdr          // what sendF sends

	answered, handed atomic.Uint64 // queries answered here, handed over (FastPathStats)

	n            int // what the last call moved
	errno        syscall.Errno
	recvF, sendF func(fd uintptr) bool
	sc           fastScratch
	prep         [fastBatch]fastPrep
	src          [fastBatch]netip.AddrPort
}

func newFastReader(s *Server, conn *net.UDPConn, h *handover) (*fastReader, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &fastReader{s: s, conn: conn, rc: rc, h: h}
	// Made once: a func value per call would be an allocation per batch.
	r.recvF = func(fd uintptr) bool { return r.mmsg(unix.SYS_RECVMMSG, fd, r.rh[:]) }
	r.sendF = func(fd uintptr) bool { return r.mmsg(unix.SYS_SENDMMSG, fd, r.ws) }
	// The address each query was sent to, so that replies leave from it
	// on a socket bound to every address (as miekg/dns asks for on its
	// own sockets). An IPv4 socket refuses the IPv6 option and the other
	// way round: either is enough.
	var v4, v6 error
	if err := rc.Control(func(fd uintptr) {
		v4 = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		v6 = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
	}); err != nil {
		return nil, err
	}
	if v4 != nil && v6 != nil {
		return nil, errors.Join(v4, v6)
	}
	for i := range fastBatch {
		r.iovIn[i].Base = &r.in[i][0]
		r.iovIn[i].SetLen(maxQuerySize)
		h := &r.rh[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Iov = &r.iovIn[i]
		h.SetIovlen(1)
		h.Control = &r.oob[i][0]
		w := &r.wh[i].hdr
		w.Iov = &r.iovOut[i]
		w.SetIovlen(1)
	}
	return r, nil
}

// mmsg makes one recvmmsg or sendmmsg call (trap) on fd for hs; it reports
// false when the socket is not ready, to wait for it, as RawConn wants.
func (r *fastReader) mmsg(trap, fd uintptr, hs []mmsghdr) bool {
	for {
		n, _, e := unix.Syscall6(trap, fd, uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.n, r.errno = int(n), e
		return true
	}
}

// run serves the socket until stop.
func (r *fastReader) run() {
	for {
		if !r.recv() {
			return // stop: a read deadline in the past, or closed
		}
		if r.errno != 0 {
			continue // an ICMP error reported on the socket, say
		}
		if nw := r.answer(); nw > 0 && !r.send(r.wh[:nw]) {
			return
		}
	}
}

// recv reads a batch of queries into r.in (r.n of them, or r.errno), and
// reports false when the socket is closed or its deadline passed.
func (r *fastReader) recv() bool {
	for i := range fastBatch {
		h := &r.rh[i]
		h.hdr.Namelen = unix.SizeofSockaddrInet6
		h.hdr.SetControllen(len(r.oob[i]))
		h.hdr.Flags = 0
		h.n = 0
	}
	return r.rc.Read(r.recvF) == nil
}

// answer answers the r.n queries recv read: the replies of the fast path
// go into r.wh[:nw] for send, the other queries to miekg/dns.
//
// It makes two passes: the first parses each query and places its rate
// limiting bucket, then every bucket's set is loaded at once, and the
// second answers. A set is a cache miss more often than not (the table is
// 2 MiB, and the device index keeps it out of the cache): loaded together,
// the batch's misses overlap instead of each answer waiting for its own.
func (r *fastReader) answer() (nw int) {
	s := r.s
	rl := s.fastRRL()
	for i := range r.n {
		r.src[i] = sockaddrAddrPort(&r.names[i])
		s.prepareFast(&r.prep[i], r.in[i][:r.rh[i].n], r.src[i].Addr(), rl, &r.sc)
	}
	for i := range r.n {
		if r.prep[i].limit {
			s.rrl.load(r.prep[i].place)
		}
	}
	for i := range r.n {
		h := &r.rh[i]
		pkt := r.in[i][:h.n]
		src := r.src[i]
		oob := sourceControl(r.oob[i][:h.hdr.Controllen])
		v, n := s.answerPrepared(&r.prep[i], pkt, src, r.out[nw][:], &r.sc, rl)
		switch v {
		case fastSend:
			w := &r.wh[nw]
			w.hdr.Name = h.hdr.Name
			w.hdr.Namelen = h.hdr.Namelen
			r.iovOut[nw].Base = &r.out[nw][0]
			r.iovOut[nw].SetLen(n)
			w.hdr.Control = nil
			w.hdr.SetControllen(0)
			if len(oob) > 0 {
				w.hdr.Control = &oob[0]
				w.hdr.SetControllen(len(oob))
			}
			nw++
			r.answered.Add(1)
		case fastDrop:
			r.answered.Add(1)
		case fastHandOver:
			r.handed.Add(1)
			if len(pkt) < 12 {
				continue // too short to answer, as miekg/dns drops it
			}
			a := &handedAddr{ap: src, conn: r.conn}
			if len(oob) > 0 {
				a.oob = append([]byte(nil), oob...)
			}
			r.h.give(handedPacket{b: append([]byte(nil), pkt...), from: a})
		}
	}
	return nw
}

// send sends every message of ms, skipping one the kernel refuses, and
// reports false when the socket is closed or its deadline passed.
func (r *fastReader) send(ms []mmsghdr) bool {
	for len(ms) > 0 {
		r.ws = ms
		if err := r.rc.Write(r.sendF); err != nil {
			return false
		}
		if r.errno != 0 || r.n == 0 {
			ms = ms[1:] // the first message failed (an unreachable client, say)
			continue
		}
		ms = ms[r.n:]
	}
	return true
}

// stop makes run return: its socket calls fail from now on.
func (r *fastReader) stop() {
	past := time.Unix(1, 0)
	r.conn.SetReadDeadline(past)  //nolint:errcheck // a closed socket stops run as well
	r.conn.SetWriteDeadline(past) //nolint:errcheck
}

// sockaddrAddrPort reads the client's address the kernel wrote.
func sockaddrAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	if sa.Family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), binary.BigEndian.Uint16(port[:]))
	}
	port := (*[2]byte)(unsafe.Pointer(&sa.Port))
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), binary.BigEndian.Uint16(port[:]))
}

// sourceControl turns the control message a query came with into the one
// its reply is sent with, in place, as miekg/dns's correctSource does: the
// source is the address the query was sent to, the interface left to
// routing. It returns nothing when there is no such message.
func sourceControl(oob []byte) []byte {
	for off := 0; off+unix.SizeofCmsghdr <= len(oob); {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[off]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || off+l > len(oob) {
			return nil
		}
		data := oob[off+unix.CmsgLen(0) : off+l]
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo: ifindex, spec_dst, addr.
			clear(data[0:4])
			copy(data[4:8], data[8:12])
			return oob[off:min(off+unix.CmsgSpace(unix.SizeofInet4Pktinfo), len(oob))]
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			// struct in6_pktinfo: addr, ifindex.
			clear(data[16:20])
			return oob[off:min(off+unix.CmsgSpace(unix.SizeofInet6Pktinfo), len(oob))]
		}
		off += unix.CmsgSpace(l - unix.CmsgLen(0))
	}
	return nil
}
