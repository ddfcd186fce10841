package turnserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
)

// udpSocketBuffer is the receive and send buffer asked for each listening
// UDP socket.
const udpSocketBuffer = 4 << 20

// listenShared opens n UDP sockets and n TCP listeners on addr, all sharing
// one port with SO_REUSEPORT so that the kernel spreads clients over them and
// the relay uses every core. A client's 5-tuple always hashes to the same
// socket, which keeps each allocation on one socket. With port 0 the port the
// first UDP socket gets is used for all, and the whole set is retried when TCP
// finds that port taken. noUDP opens TCP listeners only (the TLS port).
func listenShared(addr string, n int, noUDP bool) (udps []net.PacketConn, tcps []net.Listener, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen address %q: %w", addr, err)
	}
	lc := net.ListenConfig{Control: reusePort}
	closeAll := func() {
		for _, c := range udps {
			c.Close()
		}
		for _, l := range tcps {
			l.Close()
		}
		udps, tcps = nil, nil
	}
	ctx := context.Background()
	for attempt := 0; ; attempt++ {
		p := port
		if !noUDP {
			for i := range n {
				c, err := lc.ListenPacket(ctx, "udp", net.JoinHostPort(host, p))
				if err != nil {
					closeAll()
					return nil, nil, fmt.Errorf("listen udp %s (socket %d of %d): %w", net.JoinHostPort(host, p), i+1, n, err)
				}
				if uc, ok := c.(*net.UDPConn); ok {
					// Room for bursts from many clients; the kernel caps it
					// at net.core.rmem_max / wmem_max.
					uc.SetReadBuffer(udpSocketBuffer)  //nolint:errcheck // best effort
					uc.SetWriteBuffer(udpSocketBuffer) //nolint:errcheck // best effort
				}
				udps = append(udps, c)
				p = strconv.Itoa(c.LocalAddr().(*net.UDPAddr).Port)
			}
		}
		for i := range n {
			l, lerr := lc.Listen(ctx, "tcp", net.JoinHostPort(host, p))
			if lerr != nil {
				err = fmt.Errorf("listen tcp %s (socket %d of %d): %w", net.JoinHostPort(host, p), i+1, n, lerr)
				break
			}
			tcps = append(tcps, l)
			p = strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
		}
		if err == nil {
			return udps, tcps, nil
		}
		closeAll()
		if port != "0" || attempt == 8 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, err
		}
		err = nil
	}
}

// addrPortOf returns the address of a socket, unmapped.
func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
