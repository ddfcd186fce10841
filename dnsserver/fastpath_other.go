//go:build !linux

package dnsserver

import (
	"errors"
	"net"
	"sync/atomic"
)

// fastPathSupported says whether this system has the fast path's socket
// calls (recvmmsg, sendmmsg): here it has not, and miekg/dns serves every
// packet.
const fastPathSupported = false

type fastReader struct {
	conn             *net.UDPConn
	answered, handed atomic.Uint64
}

func newFastReader(*Server, *net.UDPConn, *handover) (*fastReader, error) {
	return nil, errors.New("the DNS fast path needs Linux")
}

func (*fastReader) run()  {}
func (*fastReader) stop() {}
