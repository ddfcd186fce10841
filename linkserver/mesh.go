package linkserver

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nasreach/nasreach/anonymize"
	"github.com/nasreach/nasreach/connlog"
	"github.com/nasreach/nasreach/link"
	"github.com/nasreach/nasreach/store"
	"github.com/quic-go/quic-go"
)

// Presence is where a relay of a cluster records the agents it holds and
// learns which node holds the others; *store.Presence (etcd) implements
// it.
type Presence interface {
	// Online and Offline record that this node holds, or no longer holds,
	// the device's agent. They must not block.
	Online(device string)
	Offline(device string)
	// Holder returns the node holding the device's agent, from memory.
	Holder(device string) (store.Holder, bool)
	// Self is this node.
	Self() store.Holder
	// OnChange registers f, called in commit order with each change of a
	// device's holder, this node's records included.
	OnChange(f func(device string, h store.Holder, ok bool))
}

// MeshStats counts the forwarding between the nodes of a cluster.
type MeshStats struct {
	// Conns are the mesh connections up now, to or from other nodes.
	Conns int
	// Sessions counts the sessions this node forwarded to another node,
	// Bytes their bytes both ways.
	Sessions, Bytes uint64
	// Received counts the sessions other nodes forwarded to this one.
	Received uint64
}

// mesh is a relay's connections to the other nodes of its cluster, one
// per node (whichever end dialed it), by node name.
type mesh struct {
	mu    sync.Mutex
	conns map[string]link.Carrier
	// dialing holds a lock per node: one dial to a node at a time, so no
	// two connections to one node, while a dead node's dial (until the
	// handshake timeout) holds up no forwarding to the others.
	dialing map[string]*sync.Mutex
	// forwarded are the mesh streams of the sessions this node forwards,
	// by device, with the node each goes to (agentMoved).
	forwarded map[string]map[link.Stream]string

	sessions, bytes, received atomic.Uint64
}

// addForwarded and dropForwarded keep the list agentMoved reads.
func (m *mesh) addForwarded(device, node string, ms link.Stream) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.forwarded == nil {
		m.forwarded = map[string]map[link.Stream]string{}
	}
	if m.forwarded[device] == nil {
		m.forwarded[device] = map[link.Stream]string{}
	}
	m.forwarded[device][ms] = node
}

func (m *mesh) dropForwarded(device string, ms link.Stream) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.forwarded[device], ms)
	if len(m.forwarded[device]) == 0 {
		delete(m.forwarded, device)
	}
}

// agentMoved resets the sessions this node forwards for device to a node
// other than node, which now holds its agent: the agent's connection to
// the old node is gone (it reconnected because it lost it, or the old
// node closes it as replaced), so those streams carry nothing more. Left
// alone, they would wait for the mesh connection's idle timeout when the
// old node died without a word (killed, cut off), and a resumable
// session for the agent's resume window, which started when the agent
// noticed, and may run out first; reset, the client resumes at once, by
// way of the node now holding the agent.
func (l *Server) agentMoved(device, node string) {
	l.mesh.mu.Lock()
	var stale []link.Stream
	for ms, to := range l.mesh.forwarded[device] {
		if to != node {
			stale = append(stale, ms)
		}
	}
	l.mesh.mu.Unlock()
	for _, ms := range stale {
		ms.CancelRead(link.StreamAborted)
		ms.CancelWrite(link.StreamAborted)
	}
	if len(stale) > 0 {
		l.log.Info().Str("device", device).Str("node", node).Int("sessions", len(stale)).
			Msg("the agent moved to another node; ending the sessions forwarded to its old one, for their clients to resume")
	}
}

// MeshStats returns the mesh's counters.
func (l *Server) MeshStats() MeshStats {
	l.mesh.mu.Lock()
	n := len(l.mesh.conns)
	l.mesh.mu.Unlock()
	return MeshStats{Conns: n, Sessions: l.mesh.sessions.Load(), Bytes: l.mesh.bytes.Load(), Received: l.mesh.received.Load()}
}

// online and offline tell the presence, if any, about this relay's agents.
func (l *Server) online(device string) {
	if l.cfg.Presence != nil {
		l.cfg.Presence.Online(device)
	}
}

func (l *Server) offline(device string) {
	if l.cfg.Presence != nil {
		l.cfg.Presence.Offline(device)
	}
}

// presenceChanged closes this node's agent for device once another node
// has recorded a newer agent for it (the cross-node CloseReplaced): the
// record came after this node's own for that agent, so the agent
// reconnected there and the connection here is stale (its NAS changed
// networks, say) and would only fail the clients that reach this node.
// A record of another node seen before this node's own lands is older and
// is overwritten by ours. Any record also ends the sessions this node
// forwards for device to another node than the one recorded (agentMoved).
func (l *Server) presenceChanged(device string, h store.Holder, ok bool) {
	if !ok {
		return
	}
	l.agentMoved(device, h.Node)
	a := l.agent(device)
	if a == nil {
		return
	}
	if h.Node == l.cfg.Presence.Self().Node {
		a.recorded.Store(true)
		return
	}
	if !a.recorded.Load() {
		return
	}
	l.mu.Lock()
	if l.agents[device] == a {
		delete(l.agents, device)
	}
	l.mu.Unlock()
	l.log.Info().Str("device", device).Str("node", h.Node).Msg("the agent connected to another node; closing its older connection here")
	a.reason.CompareAndSwap(0, link.StreamDeviceGone)
	l.wg.Go(func() {
		a.close(link.CloseReplaced, link.StreamDeviceGone, "replaced by a newer agent for this device on another node")
	})
}

// holder returns the other node that holds device's agent, when this relay
// is a node of a cluster that forwards.
func (l *Server) holder(device string) (store.Holder, bool) {
	if l.cfg.Presence == nil || l.cfg.MeshKey == "" {
		return store.Holder{}, false
	}
	h, ok := l.cfg.Presence.Holder(device)
	if !ok || h.Node == l.cfg.Presence.Self().Node || len(h.Addrs) == 0 {
		return store.Holder{}, false
	}
	return h, true
}

// serveMesh serves a mesh connection another node dialed: its MeshHello,
// then the Forward streams on it.
func (l *Server) serveMesh(c link.Carrier, ctrl link.Stream, h link.MeshHello, src netip.AddrPort) {
	if l.cfg.MeshKey == "" || subtle.ConstantTimeCompare([]byte(h.Key), []byte(l.cfg.MeshKey)) != 1 {
		l.log.Warn().Str("node", h.Node).Str("client", anonymize.Addr(src.Addr()).String()).Msg("link mesh connection refused: wrong mesh key")
		link.WriteFrame(ctrl, link.Result{Status: link.StatusBadCredentials, Message: "wrong mesh key"})
		l.closeAfterAnswer(c, ctrl, link.CloseRefused, "wrong mesh key")
		return
	}
	if err := link.WriteFrame(ctrl, link.Result{Status: link.StatusOK}); err != nil {
		c.CloseWithError(link.CloseNormal, "")
		return
	}
	l.meshUp(h.Node, c, ctrl)
}

// meshUp registers a mesh connection to node and serves the streams the
// other node opens on it until it ends.
func (l *Server) meshUp(node string, c link.Carrier, ctrl link.Stream) {
	l.mesh.mu.Lock()
	l.mesh.conns[node] = c
	l.mesh.mu.Unlock()
	l.log.Info().Str("node", node).Msg("link mesh connection up")
	l.hold(c, ctrl, link.CloseNormal, func(s link.Stream) { l.serveForwardStream(c, s) })
	l.mesh.mu.Lock()
	if l.mesh.conns[node] == c {
		delete(l.mesh.conns, node)
	}
	l.mesh.mu.Unlock()
	c.CloseWithError(link.CloseNormal, "")
	l.log.Info().Str("node", node).Msg("link mesh connection down")
}

// serveForwardStream serves a session another node forwarded: checked as
// a Connect (but for the client's rate, the first node's to limit) and
// relayed to the agent this node holds. It never forwards again.
func (l *Server) serveForwardStream(c link.Carrier, s link.Stream) {
	s.SetReadDeadline(l.cfg.Now().Add(l.cfg.HandshakeTimeout))
	fr, err := link.ReadFrame(s, l.cfg.MaxHeaderBytes)
	s.SetReadDeadline(time.Time{})
	f, ok := fr.(link.Forward)
	if err != nil || !ok {
		refuseStream(s, "expected a forward frame")
		return
	}
	start := l.cfg.Now()
	device := strings.ToLower(f.Device)
	ev := connlog.Event{Kind: "session", Device: device, Client: f.Client.Addr(), Port: f.Port, Start: start}
	a, st, msg := l.admit(device, f.AccessCode)
	if st != link.StatusOK {
		l.refuse(s, ev, st, msg, c.Transport())
		return
	}
	l.mesh.received.Add(1)
	l.relaySession(s, a, ev, f.Port, c.Transport(), "forwarded by another node")
}

// forward relays a client's session to the node holding the agent, over
// the mesh connection to that node. The client's request has been checked
// here already (rate, device, Link, access code).
func (l *Server) forward(c link.Carrier, cs link.Stream, req link.Connect, src netip.AddrPort, h store.Holder, ev connlog.Event) {
	refuse := func(st link.Status, msg string) { l.refuse(cs, ev, st, msg, c.Transport()) }
	mc, err := l.meshConn(h)
	if err != nil {
		l.log.Warn().Err(err).Str("node", h.Node).Msg("link mesh: cannot reach the node holding the agent")
		refuse(link.StatusOffline, fmt.Sprintf("device %s's relay node cannot be reached; try again", ev.Device))
		return
	}
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.HandshakeTimeout)
	ms, err := mc.OpenStreamSync(ctx)
	cancel()
	if err != nil {
		refuse(link.StatusOffline, fmt.Sprintf("device %s's relay node cannot be reached; try again", ev.Device))
		return
	}
	ms.SetDeadline(l.cfg.Now().Add(l.cfg.HandshakeTimeout))
	var fr link.Frame
	if err = link.WriteFrame(ms, link.Forward{Device: ev.Device, Port: req.Port, AccessCode: req.AccessCode,
		// Masked: the client's address goes no further than the node it
		// reached; the other node needs it only for its connection log.
		Client: netip.AddrPortFrom(anonymize.Addr(src.Addr()), 0)}); err == nil {
		fr, err = link.ReadFrame(ms, l.cfg.MaxHeaderBytes)
	}
	ms.SetDeadline(time.Time{})
	res, ok := fr.(link.Result)
	if err != nil || !ok {
		ms.CancelRead(link.StreamAborted)
		ms.CancelWrite(link.StreamAborted)
		refuse(link.StatusOffline, fmt.Sprintf("device %s did not answer", ev.Device))
		return
	}
	if res.Status != link.StatusOK {
		ms.Close()
		ms.CancelRead(link.StreamRefused)
		refuse(res.Status, res.Message)
		return
	}
	l.sessions.Add(1)
	defer l.sessions.Add(-1)
	l.mesh.sessions.Add(1)
	if err := link.WriteFrame(cs, link.Result{Status: link.StatusOK}); err != nil {
		ms.CancelRead(link.StreamAborted)
		ms.CancelWrite(link.StreamAborted)
		ev.Outcome, ev.Detail, ev.Time = "error", "client went away", l.cfg.Now()
		l.event(ev)
		return
	}
	l.mesh.addForwarded(ev.Device, h.Node, ms)
	in, out, err := l.splice(cs, ms, &linkAgent{device: ev.Device}, ev.Device)
	l.mesh.dropForwarded(ev.Device, ms)
	l.mesh.bytes.Add(uint64(in + out))
	ev.BytesIn, ev.BytesOut, ev.Time, ev.Outcome = in, out, l.cfg.Now(), "ok"
	ev.Detail = "forwarded to node " + h.Node
	switch {
	case moved(err):
		ev.Detail += ": moved to a direct path"
	case err != nil:
		ev.Outcome, ev.Detail = "aborted", ev.Detail+": "+abortReason(err, &linkAgent{})
	}
	ev.Detail = over(c.Transport(), ev.Detail)
	l.event(ev)
	l.log.Debug().Str("device", ev.Device).Uint16("port", req.Port).Str("node", h.Node).
		Int64("bytes_in", in).Int64("bytes_out", out).Str("outcome", ev.Outcome).Msg("link session forwarded")
}

// meshConn returns the mesh connection to h's node, dialing it (from the
// relay's own UDP socket) when there is none.
func (l *Server) meshConn(h store.Holder) (link.Carrier, error) {
	if c := l.meshLookup(h.Node); c != nil {
		return c, nil
	}
	l.mesh.mu.Lock()
	dial := l.mesh.dialing[h.Node]
	if dial == nil {
		dial = new(sync.Mutex)
		l.mesh.dialing[h.Node] = dial
	}
	l.mesh.mu.Unlock()
	dial.Lock()
	defer dial.Unlock()
	if c := l.meshLookup(h.Node); c != nil {
		return c, nil
	}
	var errs []error
	for _, to := range h.Addrs {
		if to.Addr().Is4() != l.addr.Addr().Unmap().Is4() && !l.addr.Addr().IsUnspecified() {
			continue // another family than the socket's
		}
		c, err := l.dialMesh(h.Node, to)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("node %s advertises no address of this relay's family", h.Node)
	}
	return nil, errors.Join(errs...)
}

func (l *Server) meshLookup(node string) link.Carrier {
	l.mesh.mu.Lock()
	defer l.mesh.mu.Unlock()
	if c := l.mesh.conns[node]; c != nil && c.Context().Err() == nil {
		return c
	}
	return nil
}

// dialMesh opens the mesh connection to node at to and logs in with the
// mesh key; the connection is then served as one the other node dialed.
func (l *Server) dialMesh(node string, to netip.AddrPort) (link.Carrier, error) {
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.HandshakeTimeout)
	defer cancel()
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{link.ALPN},
		// The peer is checked against the cluster's certificate below,
		// not by name: nodes are dialed at their addresses.
		InsecureSkipVerify: true, VerifyConnection: l.verifyNode,
	}
	qc, err := l.tr.Dial(ctx, net.UDPAddrFromAddrPort(to), tlsConf, &quic.Config{
		HandshakeIdleTimeout: l.cfg.HandshakeTimeout, MaxIdleTimeout: l.cfg.IdleTimeout, KeepAlivePeriod: l.cfg.IdleTimeout / 3,
		MaxIncomingStreams: linkMaxClientStreams, MaxIncomingUniStreams: -1,
	})
	if err != nil {
		return nil, fmt.Errorf("mesh to node %s at %s: %w", node, to, err)
	}
	c := link.QUICCarrier(qc)
	fail := func(err error) (link.Carrier, error) {
		c.CloseWithError(link.CloseNormal, "")
		return nil, fmt.Errorf("mesh to node %s at %s: %w", node, to, err)
	}
	ctrl, err := c.OpenStreamSync(ctx)
	if err != nil {
		return fail(err)
	}
	ctrl.SetDeadline(l.cfg.Now().Add(l.cfg.HandshakeTimeout))
	var fr link.Frame
	if err = link.WriteFrame(ctrl, link.MeshHello{Node: l.cfg.Presence.Self().Node, Key: l.cfg.MeshKey}); err == nil {
		fr, err = link.ReadFrame(ctrl, l.cfg.MaxHeaderBytes)
	}
	if err != nil {
		return fail(err)
	}
	ctrl.SetDeadline(time.Time{})
	if res, ok := fr.(link.Result); !ok || res.Status != link.StatusOK {
		return fail(fmt.Errorf("refused: %v", fr))
	}
	// Served like an accepted connection: closed at Shutdown, its streams
	// (forwards the other node opens) served.
	if !l.track(c, func() { l.meshUp(node, c, ctrl) }) {
		return nil, fmt.Errorf("mesh to node %s: relay shutting down", node)
	}
	l.mesh.mu.Lock()
	l.mesh.conns[node] = c // meshUp may not have run yet
	l.mesh.mu.Unlock()
	return c, nil
}

// verifyNode accepts a node that presents the certificate key this relay
// serves (the cluster shares one key pair), or a certificate that the
// system roots verify for this relay's own name.
func (l *Server) verifyNode(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the node presented no certificate")
	}
	own, err := l.ownLeaf()
	if err != nil {
		return err
	}
	peer := cs.PeerCertificates[0]
	if bytes.Equal(peer.RawSubjectPublicKeyInfo, own.RawSubjectPublicKeyInfo) {
		return nil
	}
	if len(own.DNSNames) > 0 {
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		if _, err := peer.Verify(x509.VerifyOptions{DNSName: own.DNSNames[0], Intermediates: inter}); err == nil {
			return nil
		}
	}
	return fmt.Errorf("the node's certificate (%s) is not the cluster's: give every node the same tls-cert and tls-key", link.Fingerprint(peer.RawSubjectPublicKeyInfo))
}

// ownLeaf is the certificate this relay serves now.
func (l *Server) ownLeaf() (*x509.Certificate, error) {
	cert := &l.cfg.Certificate
	if l.cfg.GetCertificate != nil {
		var err error
		if cert, err = l.cfg.GetCertificate(&tls.ClientHelloInfo{}); err != nil {
			return nil, err
		}
	}
	if cert.Leaf != nil {
		return cert.Leaf, nil
	}
	if len(cert.Certificate) == 0 {
		return nil, errors.New("the relay has no certificate")
	}
	return x509.ParseCertificate(cert.Certificate[0])
}
