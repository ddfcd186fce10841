package link

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Link wire protocol, version 1.
//
// Link carries TCP connections between a client and a NAS that both dial out
// to a relay. It runs over QUIC (RFC 9000) with ALPN "nasreach-link/1", or
// where UDP is blocked over TLS and TCP with the same streams ("Over TCP"
// below); the relay authenticates itself with its TLS certificate (pinned by the SHA-256
// of its SubjectPublicKeyInfo, or verified against the system roots).
//
// Agent connection (the NAS side, one per device):
//
//	agent                                   relay
//	  │── QUIC handshake ─────────────────────▶│
//	  │── open stream 0: Hello{device, token} ─▶│ store.Authenticate, link on?
//	  │◀──────────────────── Result{status} ────│ StatusOK, or refused and closed
//	  │   (stream 0 stays open: the control stream; its end ends the agent;
//	  │    the relay writes Revoke frames on it, nothing else is sent)
//	  │◀── relay opens a stream per session: Open{port}
//	  │── Result{status} ──────────────────────▶│ StatusOK if the port is exposed
//	  │◀═══════ end-to-end TLS bytes, spliced ═══▶│
//
// A second agent for the same device replaces the first: the relay closes the
// older connection with CloseReplaced (in a cluster, also when the second
// connected to another node: "Across nodes"). Link switched off or the device deleted
// closes the agent connection at once (CloseLinkDisabled, CloseDeviceGone).
//
// Client connection (one per client process, any number of sessions):
//
//	client                                  relay                      agent
//	  │── open stream: Connect{device, port, code} ─▶│ checks device, access code,
//	  │                                        │     limits; opens a stream ─▶ Open{port}
//	  │◀──────────────── Result{status} ───────│◀──────── Result{status} ───│
//	  │◀════════════ end-to-end TLS bytes, spliced both ways ════════════════▶│
//
// After a StatusOK Result the stream carries only the end-to-end TLS 1.3
// session between client (TLS client) and agent (TLS server, the device key,
// ALPN "nasreach-e2e/1"), then the application's bytes inside it; a client
// of this version first makes the session resumable, and the TLS bytes
// then travel in records ("Resumable sessions" below). The relay
// splices the two streams without reading into them; a FIN is forwarded as a
// FIN (half-close) and a reset as a reset. Any other status is followed by the
// end of the stream. Because the end-to-end TLS starts only after the Result,
// a direct (hole-punched) path can replace the relay: the client sends Open
// straight to the agent and runs the same TLS over that stream.
//
// # Direct paths
//
// Agents and clients each own one UDP socket, shared by QUIC (to the relay,
// and between them), STUN and probes. The relay is the rendezvous; every
// session still starts on it at once, and moves to a direct path once one
// works (Tailscale's disco over DERP, iroh's relay, on our own terms).
//
//	client                                  relay                      agent
//	  │── Info ──────────────────────────────▶│◀──────────────── Info ──│ (own streams, kept open)
//	  │◀─────────────────── RelayInfo ────────│──── RelayInfo ─────────▶│ STUN address, direct on?
//	  │   STUN Binding to RelayInfo's address through the same socket: srflx candidate
//	  │   STUN Binding to the relay's own port too: the NAT's mapping (nat candidate)
//	  │── Direct{device, code, id, key, cands} ▶│ authorizes it as Connect, opens a stream ─▶ Punch{id, key, cands}
//	  │◀────────────── Candidates{agent's} ───│◀────────── Candidates{agent's} ─│ (or a Result refusing)
//	  │◀═══ Ping/Pong probes, both ends to every candidate at once (UDP) ════════▶│
//	  │◀═══ no pong in 1 s, one NAT symmetric: birthday probing (see below) ═════▶│
//	  │── QUIC handshake straight to the first candidate that answered ─────────▶│ device key, pinned
//	  │── stream: DirectHello{id, proof} ───────────────────────────────────────▶│ Result
//	  │── stream per session: Open{port} ───────────────────────────────────────▶│ Result, then e2e TLS
//	  │── Report{device, outcome, kinds, ms} ─▶│ (own stream; metrics and the connection log)
//
// Info is a stream an agent (after its Hello) or a client opens; the relay
// answers RelayInfo at once and again whenever it changes (the operator
// turning direct paths off), and the stream stays open. A relay without
// direct paths resets the stream (agents' connections) or answers
// StatusBadRequest: no direct paths, nothing else changes.
//
// Direct asks the relay to introduce the client to the agent. The relay
// authorizes it exactly as a Connect (device, Link on, access code, agent
// online, rate and stream limits) and also refuses with StatusNoDirect when
// the operator has direct paths off; it forwards the client's candidates to
// the agent in Punch, and the agent's answer (Candidates, or a Result
// refusing: StatusNoDirect for an agent with --direct never; an agent that
// predates direct paths answers StatusBadRequest) back to the client. The relay
// passes candidates only between the two authenticated ends of an exchange
// and logs them masked. An empty candidate list from the client renews the
// authorization of a direct connection already up: no probes follow.
//
// The exchange id (8 random bytes) names the exchange in probes; the key
// (32 random bytes) authenticates them. Both come from the client; the
// relay sees them, which gives it nothing it does not have: it already
// chooses who talks to whom, and the end-to-end TLS pins the device key on
// either path. Off-path third parties cannot forge a probe, so they can
// neither redirect a session nor get a connection accepted.
//
// Probes are UDP datagrams on the same socket as QUIC and STUN, told apart
// by their first bytes (QUIC sets bit 0x40 of the first byte, STUN carries
// its magic cookie at offset 4, a probe starts with ProbeMagic):
//
//	magic    [4]  ProbeMagic (first byte 0x3e: the top two bits clear, so
//	              quic-go hands the datagram to ReadNonQUICPacket)
//	version  u8   1
//	type     u8   ProbePing or ProbePong
//	sender   u8   ProbeFromClient or ProbeFromAgent (a reflected probe fails)
//	zero     u8
//	exchange [8]  the exchange id
//	tx       [12] random per ping; a pong repeats its ping's
//	observed [19] in a pong, the source address of the ping: family u8 (4 or 6) |
//	              address [16] (IPv4 in the first 4 bytes) | port u16; zero in a ping
//	mac      [16] HMAC-SHA256(key, "nasreach-probe/1" | all the bytes above), first 16 bytes
//
// A probe is ProbeLen (63) bytes. The observed address tells the pinging
// end which of its candidates the other end saw it from (host, srflx, or
// another mapping: peer-reflexive).
//
// Both ends send a ping to every candidate of the other end, several times
// over a few seconds (ProbeInterval, ProbeTimeout): the first packets open
// each end's NAT mapping toward the other (simultaneous open). A valid ping
// is answered with a pong to its source address, and that address, when it
// is none of the sender's candidates (a symmetric NAT's new port), is
// pinged too; a pong counts only from the address its ping went to. The
// agent keeps an exchange for ExchangeTTL: for that long it answers its
// pings and accepts direct QUIC handshakes (ALPN "nasreach-direct/1", the
// device certificate) from the source addresses of its valid pings, and no
// others. The client dials the candidate whose pong came first, pins the
// device key in that handshake too, and opens a stream with DirectHello:
// the exchange id and proof = HMAC-SHA256(key, "nasreach-direct/1" |
// exchange id). The agent answers StatusOK if the relay introduced that
// exchange and it has not expired (each is used once), and then serves Open
// streams on the connection for its DirectLifetime (10 minutes by
// default); after that it answers an Open with StatusAccessDenied. A
// client renews the authorization with a new exchange through the relay
// (no candidates) and a new DirectHello on the same connection, every
// DirectRenewAfter while it uses the path, or when an Open is refused so;
// an access code revoked at the relay is refused at the next renewal.
// Link off, the device deleted, or direct paths turned off by the
// operator close the agent's direct connections at once; so does an
// access code revoked (or the device's access changed so that an
// exchange's code no longer admits it): the relay remembers the access
// code of each exchange it introduced for DirectGrantTTL, checks them
// again at every change to the device (and when its agent logs in), and
// writes Revoke, listing the exchanges no longer admitted, on the agent's
// control stream. The agent closes each direct connection whose latest
// DirectHello used one of them (CloseRevoked), and forgets those
// exchanges. DirectGrantTTL is DefaultDirectLifetime plus ExchangeTTL: an
// agent configured with a longer DirectLifetime keeps connections
// authorized beyond what the relay remembers. An agent that predates Revoke takes any byte on its
// control stream for its end and reconnects; its direct connections then
// last until their authorization runs out, as before.
// The relay passes on no link-local candidate, and loopback ones only
// between two ends that both reach it over loopback (its own machine).
//
// A direct connection that receives nothing for a few seconds (more than
// its keep-alive period), or on which an Open got no answer, may have lost
// its path to an address change. The client then makes a new exchange
// through the relay (the agent asks STUN again first, so that its
// candidates are current) and probes: the agent's pings open its NAT to
// the client's new mapping, QUIC moves the connection to it, and a
// DirectHello on the connection renews its authorization. When the agent
// answers at another address than the connection's, QUIC cannot follow
// (a server does not migrate): the client closes the connection and
// punches a new one at once.
//
// Every stream on a direct connection starts with DirectHello (answered by a
// Result, then the stream ends) or Open (a session, as from the relay).
// Report tells the relay how an attempt ended, for its metrics; it carries
// no address.
//
// # Over TCP
//
// Where UDP is blocked (some corporate, hotel and mobile networks), agents
// and clients reach the relay over TCP instead, at its TCP address (by
// default the host and port number of its UDP one): TLS 1.3 with ALPN
// "nasreach-link-tcp/1" and the relay's certificate, pinned alike, then
// yamux (version 0, as github.com/libp2p/go-yamux/v5 speaks it; the agent or
// client is yamux's client, the relay its server) carrying streams. A
// yamux stream stands for a QUIC stream: the same frames in the same
// order, the same end-to-end TLS after an OK Result. A FIN is yamux's FIN;
// a reset is yamux's RST, whose length field carries the stream error code
// and which ends both directions (every reset here cancels both); a
// STOP_SENDING while the write side is open is sent as an RST right after
// the FIN. Closing the connection sends a GoAway whose code is 0x100 plus
// the connection close code (yamux keeps 0 to 2 for itself). A stream's
// window is yamux's 256 KiB and does not grow (link/carrier_tcp.go,
// tcpStreamWindow: go-yamux's growth loses window updates).
// A stream over the receiver's limit of open streams is reset with code 0
// (QUIC would make the opener wait). Keep-alives are yamux pings; one
// unanswered for 10 s ends the connection. The relay applies the same
// authentication, limits and logs as on QUIC (its logs say "over tcp"),
// caps TCP connections per source, and bounds the TCP and TLS handshakes
// plus the first frame by its handshake timeout.
//
// Direct paths need UDP: a client on TCP asks for none, and an agent on
// TCP answers Punch with StatusNoDirect. Agents and clients try QUIC
// first and dial TCP beside it when QUIC has not answered within a head
// start (a second); after TCP won they dial TCP first for a while, probe
// QUIC meanwhile, and move back to it when it answers and no session of
// theirs is open (link/fallback.go).
//
// # NAT mapping and birthday probing
//
// Probing the candidates fails between a NAT that maps each destination to
// a new port ("symmetric": RFC 4787 address-and-port-dependent mapping) and
// one that filters by address and port: the symmetric side's pings leave
// from a port the other side never sent to. So each end learns how its NAT
// maps its socket: a STUN Binding to RelayInfo's STUN server and another to
// the relay's own QUIC port (the relay answers STUN there too), both
// through the one socket. The same address and port in both answers is
// endpoint-independent mapping; one address with two ports, symmetric;
// anything else (no answer from a relay that predates this, two addresses)
// unknown. An end that knows offers it as a candidate of kind CandidateNAT:
// its NAT's public address with the port both answers gave, or with port 0
// when symmetric. It is a note, never probed; an end that predates it
// skips a port-0 candidate and pings the other like its srflx twin. The
// relay passes a CandidateNAT on only when its address is the one it sees
// the sender at: the other end aims up to BirthdayProbes pings at it.
//
// When one end is symmetric and the other endpoint-independent, and no
// candidate has answered within BirthdayAfter (1 s), both probe for up to
// BirthdayWindow (4 s) more with the exchange's pings and pongs, at most
// BirthdayRate (1000) probes a second each:
//
//   - the symmetric end opens BirthdaySockets (256) new UDP sockets, each
//     pinging the other end's CandidateNAT address, again every second:
//     256 mappings at random ports of its NAT, each open to that address
//     only; a valid ping reaching one is answered (and, on the client,
//     pinged back);
//   - the endpoint-independent end pings up to BirthdayProbes (2048)
//     distinct random ports in 1024–65535 of the symmetric NAT's address
//     from its one socket, whose mapping does not move: each ping opens its
//     own NAT's filter to that port.
//
// A port in both sets is a pair: the ping reaches that socket, or that
// socket's next ping gets through the filter the ping opened. With 256
// mappings among 64,512 ports, 2048 probes all miss with probability 0.03%,
// and half the attempts match within 174. A symmetric client dials QUIC
// from the socket a pong reached (its direct connection keeps that socket);
// a symmetric agent accepts the direct handshake, from the addresses of
// valid pings, on each socket a valid ping reached, within ExchangeTTL. The
// pair then has a prflx side. Two symmetric NATs would need some 65,000
// probes a side: that pair, and any with a mapping unknown, stays on the
// relay. An end runs at most two birthday probings at once; more exchanges
// probe their candidates only.
//
// # Across nodes
//
// Several relays ("nodes") can serve one zone from one device table on
// etcd. Each node records which agents it holds; DNS steers a client to
// the node holding the device (nasreach connect looks up the SRV
// _nasreach-link._udp.<device>.<zone>), and a node asked for a device
// whose agent is on another node forwards the session there, over one
// QUIC connection per pair of nodes (the mesh, like DERP's):
//
//	node B (client's)                        node A (agent's)
//	  │── QUIC handshake (the cluster's certificate) ─▶│
//	  │── stream 0: MeshHello{node, mesh key} ─────────▶│ key compared in constant time
//	  │◀──────────────────────── Result{status} ────────│ (stream 0 stays open)
//	  │── stream per session: Forward{device, port, code, client} ─▶│ as a Connect from client
//	  │◀──────────────────────── Result{status} ────────│◀── Open/Result with the agent
//	  │◀═══════ end-to-end TLS bytes, spliced by B and by A ═══════▶│
//
// Node B checks the client's request as for a local agent (rate, device,
// Link switch, access code); node A checks it again but for the rate
// (the client's address is B's to limit) and logs the session with the
// client's address, which B sends masked, as any relayed session. Either
// node may open Forward streams on a mesh connection, whichever dialed it.
// The mesh key is a secret every node of the cluster is configured with.
// A node resets (StreamAborted) the sessions it forwards for a device once
// the cluster records the device's agent on another node than the one they
// go to: the agent's connection there is gone, even when that node died
// without a word and the mesh connection has yet to time out, and a
// resumable session resumes at once by way of the node now holding it.
//
// # Resumable sessions
//
// A session survives the death of its stream (the relay restarting, a
// relay or direct connection lost to an address change, the TCP carrier
// reset): a thin reliable layer of records under the end-to-end TLS lets
// the TLS session, and the application's connection inside it, go on over
// a new stream, relayed or direct. The relay still splices ciphertext it
// cannot read, and needs no change: records are bytes after an OK Result.
//
//	client                                  relay / direct                agent
//	  │── Connect or Open, Result OK as above ──────────────────────────────▶│
//	  │── Session{id} ───────────────────────────────────────────────────────▶│ id: 16 random bytes;
//	  │◀───────────────────────────────────────────────────── Result{status} ─│ dials the service: StatusOK,
//	  │                                                                       │ or StatusDialFailed
//	  │◀══ Data{TLS bytes} / Ack{received} / End{offset, flags}, both ways ══▶│
//	  ╳   the stream dies: both ends suspend the session; the agent keeps it
//	  │                                           for its resume window (30 s)
//	  │── new stream: Connect (checked as any) or Open, Result OK ───────────▶│ no dial: the session
//	  │── Resume{id, received} ──────────────────────────────────────────────▶│ has its connection
//	  │◀────────────────────────────────────────────────── Resumed{received} ─│ or Result{StatusNoSession}
//	  │◀══ each end sends again from the other's count, then on as before ══▶│
//
// Data carries the next bytes of the TLS stream (at most MaxRecordData; a
// writer sends one TLS record per Data). Each end keeps what it sent until
// an Ack covers it: Ack carries the count of bytes received and taken by
// the application (read, or dropped after it closed; End counts as one
// more, taken once all before it is), sent after every 256 KiB taken, 20
// ms after the first byte taken and not yet acknowledged, and at once for
// an End. A writer with 4 MiB unacknowledged waits (this one counts the
// memory it keeps them in, so that a stream of small records waits
// sooner): that bound is the session's flow control, so each end reads
// its stream at once, whatever the application does, and an Ack never
// waits behind bytes the other end does not read. Data more than 4 MiB
// past the count a reader last sent (in an Ack, Resume or Resumed) breaks
// it: the reader ends the session. End is the writer's half-close at
// offset (the bytes before it): its peer reads EOF there; flag bit 0
// ("closed") says the writer reads no more either, so its peer's writes
// fail (what a STOP_SENDING did for a plain session). End may come a
// second time, at the same offset, to add that flag. A session is over
// for an end once its End is acknowledged and it has taken the peer's End
// (or sent the closed flag), or when the peer's End carries the flag: the
// end then half-closes the stream with a FIN after its last Ack, and
// forgets the id.
//
// A stream that fails (reset, its connection closed or idle, a FIN before
// the session is over) suspends the session at both ends. The client opens
// a new stream to the device by whichever path works now: the direct path
// when it is up, else the relay, whose Connect checks the device, its Link
// switch and the access code as for a new session. The agent answers an
// Open once the port is exposed, without dialing: it dials the service
// when a Session follows (its Result is StatusDialFailed, as an Open's
// was, when the service does not answer), never for a Resume, whose
// session has its connection already. Resume names the session and what
// the client has taken of the agent's stream (read by the application, or
// dropped after it closed, as an Ack counts); Resumed, what the agent has
// taken of the client's. What an end received and its application has
// not read yet it drops before it answers, to have it again: so a session
// whose application does not read holds one window of it, however often
// it is resumed. Each end then sends again every Data (and End) past the
// other's count, and both go
// on: the application sees a stall, no error. The client tries again,
// backing off from 0.1 to 2 s, for its resume window (30 s by default); a
// refusal that will not pass (StatusNoSession, Link off, the access code
// wrong) ends the session at once, as does a stream reset by the relay
// with StreamLinkDisabled or a connection closed with CloseLinkDisabled,
// CloseDeviceGone or CloseRevoked. A Resume on a stream that still carries the session
// (the agent has not noticed its death) moves it: the client knows better,
// and the agent resets the old stream with StreamMoved.
//
// The client also moves a session that is going well: once a direct path
// to the device is up, each session of the device that runs through the
// relay moves onto it (a device's first sessions start on the relay before
// punching is done; sessions resumed on the relay while the direct path
// was down come back). The client opens a stream on the direct connection
// (Open, Result OK), resets the relayed stream with StreamMoved (so the
// relay logs the session as moved, not aborted), then sends Resume on the
// direct stream as above; a Resume that fails leaves the session suspended
// and resumed as after any failed path. While sessions run through the
// relay, a client whose direct path failed or was lost punches again when
// its back-off is due, without waiting for a new session.
//
// The agent answers Resume with StatusNoSession for an id it does not hold,
// for a port other than the session's, and after MaxResumes (64) resumes
// of the session. It ends a session suspended longer than its resume
// window; and when a session's suspension takes the agent past
// MaxSuspended (256) suspended at once, or past the memory they may hold
// together (DefaultMaxSuspendedBytes, 64 MiB: what each keeps for its
// peer and what it received that the service has not read), it ends those
// suspended longest until both bounds hold (a Write into a suspended
// session waits while they hold all they may). Link switched off or the
// device deleted (its relay connection closed with that code) end every
// session, suspended or not, and a Revoke ends those whose last stream
// came over a direct connection it closes. Only the two ends know
// a session's id: it travels inside the authorized stream, which the relay
// forwards without reading (a relay could read it, but it already chooses
// who talks to whom, and the end-to-end TLS pins the device key across
// every resume). Bytes are kept only in memory, until acknowledged.
//
// An agent that predates Session (or one with AgentConfig.DisableResume)
// runs the end-to-end TLS right after its OK Result: the frame's type,
// 0x0f, is no TLS record type, so its TLS server gives up on the first
// bytes without an alert and ends the stream with a FIN and no byte
// written; relays pass a FIN on as a FIN. A client that reads that clean
// end where it waits for the Session's Result (not a reset, which is how
// a failing path or this version's agent ends a stream, nor a partial
// frame) opens a plain session to the device on a new stream, and offers
// that device no Session again for as long as it runs, saying so once in
// its log (DialerConfig.DisableResume offers none to any device). The
// agent tells a client that predates resumable sessions by the byte after
// its OK Result: a Session or Resume frame type, or a TLS record (0x16),
// and serves the latter as a plain session, dialing the service then
// (for any other byte the handshake fails, and nothing needs the
// service); when the service does not answer it resets the stream, so
// such a client (and one with DialerConfig.DisableResume, or facing an
// agent with AgentConfig.DisableResume) sees its TLS handshake fail
// rather than StatusDialFailed. Since the agent's
// OK to the Open no longer says the service answered, the relay logs a
// session refused for that as a short one that ended ok; the agent logs
// why.
//
// Frame layout (all integers big-endian):
//
//	type   uint8
//	length uint16   // of body; at most MaxFrameBody, readers may set a lower bound
//	body   [length]byte
//
// Strings in a body are str8: one length byte, then that many bytes of UTF-8.
// A body must be consumed exactly; trailing bytes make the frame invalid.
const (
	FrameHello   = 0x01 // agent→relay, first stream: version u8 | device str8 | token str8
	FrameConnect = 0x02 // client→relay, each stream: version u8 | port u16 | device str8 | access code str8 (may be empty)
	FrameOpen    = 0x03 // relay→agent, each session stream: version u8 | port u16
	FrameResult  = 0x04 // reply to Hello, Connect, Open, Direct, Punch, DirectHello or Report: status u8 | message str8 (for people, never parsed)

	FrameInfo        = 0x05 // agent or client→relay, own stream kept open: version u8
	FrameRelayInfo   = 0x06 // relay→Info stream, at once and at every change: version u8 | flags u8 | STUN address
	FrameDirect      = 0x07 // client→relay, own stream: version u8 | device str8 | access code str8 | exchange id [8] | key [32] | candidates
	FramePunch       = 0x08 // relay→agent, own stream: version u8 | exchange id [8] | key [32] | candidates (the client's)
	FrameCandidates  = 0x09 // answer to Punch (agent→relay) and Direct (relay→client): version u8 | candidates (the agent's)
	FrameDirectHello = 0x0a // client→agent, a stream of a direct connection: version u8 | exchange id [8] | proof [32]
	FrameReport      = 0x0b // client→relay, own stream: version u8 | device str8 | outcome u8 | local kind u8 | remote kind u8 | milliseconds u32
	FrameMeshHello   = 0x0c // node→node, first stream of a mesh connection: version u8 | node str8 | mesh key str8
	FrameForward     = 0x0d // node→node, each mesh stream: version u8 | port u16 | device str8 | access code str8 | client address (family u8 | address | port u16)
	FrameRevoke      = 0x0e // relay→agent, on the control stream: version u8 | count u8 (1 to MaxRevoke) | count × exchange id [8]
	FrameSession     = 0x0f // client→agent, after an OK Result: version u8 | session id [16] | flags u8 (zero); answered by a Result
	FrameResume      = 0x10 // client→agent, after an OK Result: version u8 | session id [16] | received u64 (taken, as an Ack counts)
	FrameResumed     = 0x11 // agent→client, answer to Resume: version u8 | received u64 (taken, as an Ack counts)
)

// Records: after a Session's OK Result or a Resumed, each direction of the
// stream carries these instead of frames ("Resumable sessions"). Same
// header as a frame (type u8 | length u16), but a Data body may be up to
// MaxRecordData bytes.
const (
	RecordData = 0x12 // the next bytes of the end-to-end TLS stream: 1 to MaxRecordData bytes
	RecordAck  = 0x13 // received u64: what the writer of the Ack has taken of its peer's stream (read by its application, or dropped after it closed), End included
	RecordEnd  = 0x14 // offset u64 (the bytes sent before it) | flags u8: the writer's half-close; bit 0 set: it reads no more either
)

// Field layouts of the direct-path frames:
//
//	flags       u8: bit 0 set when the relay allows direct paths; other bits zero
//	STUN address: family u8 (0: none, 4 or 6) | address (0, 4 or 16 bytes) | port u16.
//	            Family 0 with a port: the relay's own address (the one the
//	            reader dialed) and that port; port 0: the relay runs no STUN.
//	candidates  count u8 (at most MaxCandidates) | count × (kind u8 | family u8 (4 or 6) | address | port u16);
//	            kind a CandidateKind (host, srflx, or nat: a NAT mapping, never probed)
//	outcome     a PunchOutcome

// DirectALPN is the QUIC application protocol of a direct connection from a
// client to an agent; the agent's certificate there is its device key.
const DirectALPN = "nasreach-direct/1"

// ALPN is the QUIC application protocol between agents or clients and the relay.
const ALPN = "nasreach-link/1"

// E2EALPN is the ALPN of the end-to-end TLS session inside a relayed stream.
const E2EALPN = "nasreach-e2e/1"

// Version is the protocol version carried in Hello, Connect and Open.
const Version = 1

// Size limits of the wire format.
const (
	// FrameHeaderLen is the type byte and the length.
	FrameHeaderLen = 3
	// MaxFrameBody bounds every frame body; a reader refuses larger lengths
	// before allocating.
	MaxFrameBody = 1024
	// MaxDeviceLen is the longest device name (a DNS label).
	MaxDeviceLen = 63
	// MaxSecretLen bounds a token or access code.
	MaxSecretLen = 255
	// MaxMessageLen bounds the human-readable message of a Result.
	MaxMessageLen = 255
	// MaxCandidates bounds the candidates in one list.
	MaxCandidates = 8
	// MaxRevoke bounds the exchange ids in one Revoke; more go in more
	// frames.
	MaxRevoke = 64
	// ExchangeIDLen, KeyLen and ProofLen are the sizes of an exchange's id,
	// its probe key and a DirectHello's proof.
	ExchangeIDLen = 8
	KeyLen        = 32
	ProofLen      = 32
	// SessionIDLen is the size of a resumable session's id.
	SessionIDLen = 16
	// MaxRecordData bounds the body of a Data record (the length field's
	// maximum); the other records have fixed bodies.
	MaxRecordData = 1<<16 - 1
)

// Status is the outcome carried by a Result frame.
type Status uint8

// The statuses. New ones may be added; an unknown status is a refusal.
const (
	StatusOK             Status = 0  // go ahead: the stream now carries the session
	StatusBadRequest     Status = 1  // malformed frame or unsupported version
	StatusBadCredentials Status = 2  // agent: unknown device or wrong token
	StatusUnknownDevice  Status = 3  // client: no such device on this relay
	StatusLinkDisabled   Status = 4  // the device has Link switched off
	StatusOffline        Status = 5  // the device's agent is not connected
	StatusAccessDenied   Status = 6  // access code missing or wrong
	StatusPortNotExposed Status = 7  // the agent does not serve that port
	StatusDialFailed     Status = 8  // the agent could not reach its local service
	StatusRateLimited    Status = 9  // too many new streams from this address
	StatusTooManyStreams Status = 10 // the device has too many sessions open
	StatusTooManyAgents  Status = 11 // the relay holds its maximum of agents
	StatusUnavailable    Status = 12 // relay shutting down or internal error
	StatusNoDirect       Status = 13 // direct paths are off (the operator, the agent) or not spoken by the agent
	StatusNoSession      Status = 14 // the agent holds no session with that id (never had it, ended, or resumed too often)
)

var statusText = map[Status]string{
	StatusOK: "ok", StatusBadRequest: "bad request", StatusBadCredentials: "bad credentials",
	StatusUnknownDevice: "unknown device", StatusLinkDisabled: "link disabled", StatusOffline: "device offline",
	StatusAccessDenied: "access denied", StatusPortNotExposed: "port not exposed", StatusDialFailed: "dial failed",
	StatusRateLimited: "rate limited", StatusTooManyStreams: "too many streams", StatusTooManyAgents: "too many agents",
	StatusUnavailable: "unavailable", StatusNoDirect: "no direct paths", StatusNoSession: "no such session",
}

// String returns the status in words, e.g. "device offline".
func (s Status) String() string {
	if t, ok := statusText[s]; ok {
		return t
	}
	return fmt.Sprintf("status %d", uint8(s))
}

// Stream error codes: why a relayed stream was reset (QUIC RESET_STREAM /
// STOP_SENDING).
const (
	StreamAborted      = 0x1 // the other end of the session went away
	StreamDeviceGone   = 0x2 // the agent disconnected, was replaced or the device was deleted
	StreamLinkDisabled = 0x3 // the device's Link switch was turned off
	StreamShutdown     = 0x4 // the relay is shutting down
	StreamRefused      = 0x5 // the session was refused (after a non-OK Result)
	StreamMoved        = 0x6 // the client moved the resumable session on it to a direct path
)

// Connection close codes: why the relay (or a peer) closed a QUIC connection.
const (
	CloseNormal       = 0x0 // orderly close
	CloseReplaced     = 0x1 // a newer agent for the same device connected
	CloseLinkDisabled = 0x2 // the device's Link switch was turned off
	CloseDeviceGone   = 0x3 // the device was deleted or expired
	CloseShutdown     = 0x4 // the relay is shutting down
	CloseRefused      = 0x5 // authentication or a limit refused the connection
	CloseProtocol     = 0x6 // the peer broke this protocol
	CloseIdle         = 0x7 // no first stream within the handshake timeout
	CloseRevoked      = 0x8 // a direct connection whose client the relay no longer admits (access code revoked)
)

// Frame is one of the frames above: Hello, Connect, Open, Result, Info,
// RelayInfo, Direct, Punch, Candidates, DirectHello, Report, MeshHello,
// Forward, Revoke, Session, Resume or Resumed.
type Frame interface {
	frameType() byte
	appendBody(b []byte) ([]byte, error)
}

// Hello authenticates an agent on its control stream.
type Hello struct {
	Device string
	Token  string
}

// Connect asks the relay for a session to a device's port.
type Connect struct {
	Device     string
	Port       uint16
	AccessCode string
}

// Open asks the agent to serve a session to one of its exposed ports.
type Open struct {
	Port uint16
}

// Result answers Hello, Connect or Open.
type Result struct {
	Status  Status
	Message string
}

// MeshHello opens a mesh connection from one node to another.
type MeshHello struct {
	Node string
	Key  string
}

// Forward passes a client's Connect to the node that holds the agent.
type Forward struct {
	Device     string
	Port       uint16
	AccessCode string
	// Client is the client's address as the first node saw it, masked
	// (anonymize.Addr; port 0), for the holding node's connection log:
	// the unmasked address never leaves the node the client reached.
	Client netip.AddrPort
}

// Info subscribes to the relay's RelayInfo.
type Info struct{}

// RelayInfo tells an agent or a client what the relay offers for direct
// paths.
type RelayInfo struct {
	// Direct is true when the relay introduces clients to agents.
	Direct bool
	// STUN is the relay's STUN server. An unspecified (zero) address with a
	// port means the relay's own address and that port; a zero port means
	// no STUN server.
	STUN netip.AddrPort
}

// CandidateKind says where a candidate address comes from.
type CandidateKind uint8

// The candidate kinds. An unknown kind is carried and tried like any other.
const (
	CandidateHost  CandidateKind = 1 // an address of the endpoint's own interfaces
	CandidateSrflx CandidateKind = 2 // server-reflexive: its NAT's mapping, as STUN saw it
	// CandidatePrflx is never offered: it is a mapping that is none of an
	// end's candidates (peer-reflexive), learned from the source of a valid
	// ping (the other end then probes it too) or from a pong's observed
	// address.
	CandidatePrflx CandidateKind = 3
	// CandidateNAT is no address to probe but how the end's NAT maps its
	// socket, from two STUN answers ("NAT mapping and birthday probing"):
	// the NAT's public address, with port 0 when it maps each destination
	// to a new port (symmetric), else with the one port both saw.
	CandidateNAT CandidateKind = 4
)

// String returns "host", "srflx", "prflx", "nat" or "kind N".
func (k CandidateKind) String() string {
	switch k {
	case CandidateHost:
		return "host"
	case CandidateSrflx:
		return "srflx"
	case CandidatePrflx:
		return "prflx"
	case CandidateNAT:
		return "nat"
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

// Candidate is an address at which an endpoint might be reached directly.
type Candidate struct {
	Kind CandidateKind
	Addr netip.AddrPort
}

// Direct asks the relay to introduce the client to a device's agent.
type Direct struct {
	Device     string
	AccessCode string
	Exchange   [ExchangeIDLen]byte
	Key        [KeyLen]byte
	Candidates []Candidate
}

// Punch passes a client's Direct to the agent.
type Punch struct {
	Exchange   [ExchangeIDLen]byte
	Key        [KeyLen]byte
	Candidates []Candidate
}

// Candidates is the agent's answer to Punch, passed on to the client.
type Candidates struct {
	Candidates []Candidate
}

// DirectHello authorizes a direct connection with an exchange the relay
// introduced.
type DirectHello struct {
	Exchange [ExchangeIDLen]byte
	Proof    [ProofLen]byte
}

// PunchOutcome is how an attempt at a direct path ended, as a client
// reports it.
type PunchOutcome uint8

// The outcomes a Report carries. (Refusals are the relay's own: it counts
// them without a report.)
const (
	PunchDirect   PunchOutcome = 1 // a pair answered and the direct connection is up
	PunchNoAnswer PunchOutcome = 2 // no candidate pair answered the probes
	PunchFailed   PunchOutcome = 3 // a pair answered, but the direct connection could not be set up
	PunchLost     PunchOutcome = 4 // a direct path stopped working; new sessions use the relay
)

// String returns the outcome as metrics and the connection log name it:
// "direct", "no_answer", "failed" or "lost".
func (o PunchOutcome) String() string {
	switch o {
	case PunchDirect:
		return "direct"
	case PunchNoAnswer:
		return "no_answer"
	case PunchFailed:
		return "failed"
	case PunchLost:
		return "lost"
	}
	return "unknown"
}

// Revoke tells an agent, on its control stream, that the relay no longer
// admits the clients of these exchanges (their access code was revoked):
// the direct connections they authorized must close.
type Revoke struct {
	Exchanges [][ExchangeIDLen]byte
}

// Session makes the session of a stream resumable: the client sends it
// right after the OK Result, before the end-to-end TLS.
type Session struct {
	ID [SessionIDLen]byte
}

// Resume asks the agent to go on with a suspended session on this stream.
type Resume struct {
	ID [SessionIDLen]byte
	// Received is what the client has taken of the agent's stream (as an
	// Ack counts it); the agent sends again what follows.
	Received uint64
}

// Resumed is the agent's answer to a Resume it accepts.
type Resumed struct {
	// Received is what the agent has taken of the client's stream (as an
	// Ack counts it); the client sends again what follows.
	Received uint64
}

// Report tells the relay how an attempt at a direct path to Device ended.
type Report struct {
	Device  string
	Outcome PunchOutcome
	// Local and Remote are the kinds of the candidate pair used (zero when
	// none was).
	Local, Remote CandidateKind
	// Millis is the time from the first session to the direct path, for
	// PunchDirect.
	Millis uint32
}

func (Hello) frameType() byte       { return FrameHello }
func (Connect) frameType() byte     { return FrameConnect }
func (Open) frameType() byte        { return FrameOpen }
func (Result) frameType() byte      { return FrameResult }
func (Info) frameType() byte        { return FrameInfo }
func (RelayInfo) frameType() byte   { return FrameRelayInfo }
func (Direct) frameType() byte      { return FrameDirect }
func (Punch) frameType() byte       { return FramePunch }
func (Candidates) frameType() byte  { return FrameCandidates }
func (DirectHello) frameType() byte { return FrameDirectHello }
func (Report) frameType() byte      { return FrameReport }
func (MeshHello) frameType() byte   { return FrameMeshHello }
func (Forward) frameType() byte     { return FrameForward }
func (Revoke) frameType() byte      { return FrameRevoke }
func (Session) frameType() byte     { return FrameSession }
func (Resume) frameType() byte      { return FrameResume }
func (Resumed) frameType() byte     { return FrameResumed }

// ErrFrame means a frame broke the wire format; the wrapping error says how.
var ErrFrame = errors.New("malformed link frame")

func appendStr8(b []byte, field, s string, max int) ([]byte, error) {
	if len(s) > max {
		return nil, fmt.Errorf("%w: %s is %d bytes, at most %d", ErrFrame, field, len(s), max)
	}
	return append(append(b, byte(len(s))), s...), nil
}

func (h Hello) appendBody(b []byte) ([]byte, error) {
	b = append(b, Version)
	b, err := appendStr8(b, "device", h.Device, MaxDeviceLen)
	if err != nil {
		return nil, err
	}
	return appendStr8(b, "token", h.Token, MaxSecretLen)
}

func (c Connect) appendBody(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint16(append(b, Version), c.Port)
	b, err := appendStr8(b, "device", c.Device, MaxDeviceLen)
	if err != nil {
		return nil, err
	}
	return appendStr8(b, "access code", c.AccessCode, MaxSecretLen)
}

func (o Open) appendBody(b []byte) ([]byte, error) {
	return binary.BigEndian.AppendUint16(append(b, Version), o.Port), nil
}

func (r Result) appendBody(b []byte) ([]byte, error) {
	msg := r.Message
	if len(msg) > MaxMessageLen {
		msg = msg[:MaxMessageLen]
	}
	return appendStr8(append(b, byte(r.Status)), "message", msg, MaxMessageLen)
}

func (Info) appendBody(b []byte) ([]byte, error) { return append(b, Version), nil }

func (r RelayInfo) appendBody(b []byte) ([]byte, error) {
	var flags byte
	if r.Direct {
		flags |= 1
	}
	b = append(b, Version, flags)
	a := r.STUN.Addr()
	switch {
	case !a.IsValid() || a.IsUnspecified():
		b = append(b, 0)
	case a.Is4():
		b = append(append(b, 4), a.AsSlice()...)
	case a.Zone() != "":
		return nil, fmt.Errorf("%w: STUN address %s has a zone", ErrFrame, a)
	default:
		b = append(append(b, 6), a.AsSlice()...)
	}
	return binary.BigEndian.AppendUint16(b, r.STUN.Port()), nil
}

func appendCandidates(b []byte, cs []Candidate) ([]byte, error) {
	if len(cs) > MaxCandidates {
		return nil, fmt.Errorf("%w: %d candidates, at most %d", ErrFrame, len(cs), MaxCandidates)
	}
	b = append(b, byte(len(cs)))
	for _, c := range cs {
		a := c.Addr.Addr()
		switch {
		case !a.IsValid() || a.Zone() != "":
			return nil, fmt.Errorf("%w: candidate address %s", ErrFrame, c.Addr)
		case a.Is4():
			b = append(append(b, byte(c.Kind), 4), a.AsSlice()...)
		default:
			b = append(append(b, byte(c.Kind), 6), a.AsSlice()...)
		}
		b = binary.BigEndian.AppendUint16(b, c.Addr.Port())
	}
	return b, nil
}

func (d Direct) appendBody(b []byte) ([]byte, error) {
	b, err := appendStr8(append(b, Version), "device", d.Device, MaxDeviceLen)
	if err != nil {
		return nil, err
	}
	if b, err = appendStr8(b, "access code", d.AccessCode, MaxSecretLen); err != nil {
		return nil, err
	}
	return appendCandidates(append(append(b, d.Exchange[:]...), d.Key[:]...), d.Candidates)
}

func (p Punch) appendBody(b []byte) ([]byte, error) {
	return appendCandidates(append(append(append(b, Version), p.Exchange[:]...), p.Key[:]...), p.Candidates)
}

func (c Candidates) appendBody(b []byte) ([]byte, error) {
	return appendCandidates(append(b, Version), c.Candidates)
}

func (h DirectHello) appendBody(b []byte) ([]byte, error) {
	return append(append(append(b, Version), h.Exchange[:]...), h.Proof[:]...), nil
}

func (r Report) appendBody(b []byte) ([]byte, error) {
	b, err := appendStr8(append(b, Version), "device", r.Device, MaxDeviceLen)
	if err != nil {
		return nil, err
	}
	return binary.BigEndian.AppendUint32(append(b, byte(r.Outcome), byte(r.Local), byte(r.Remote)), r.Millis), nil
}

func (h MeshHello) appendBody(b []byte) ([]byte, error) {
	b, err := appendStr8(append(b, Version), "node", h.Node, MaxDeviceLen)
	if err != nil {
		return nil, err
	}
	return appendStr8(b, "mesh key", h.Key, MaxSecretLen)
}

func (f Forward) appendBody(b []byte) ([]byte, error) {
	b, err := Connect{Device: f.Device, Port: f.Port, AccessCode: f.AccessCode}.appendBody(b)
	if err != nil {
		return nil, err
	}
	switch a := f.Client.Addr(); {
	case !a.IsValid() || a.Zone() != "":
		return nil, fmt.Errorf("%w: client address %s", ErrFrame, f.Client)
	case a.Is4():
		b = append(append(b, 4), a.AsSlice()...)
	default:
		b = append(append(b, 6), a.AsSlice()...)
	}
	return binary.BigEndian.AppendUint16(b, f.Client.Port()), nil
}

func (r Revoke) appendBody(b []byte) ([]byte, error) {
	if len(r.Exchanges) == 0 || len(r.Exchanges) > MaxRevoke {
		return nil, fmt.Errorf("%w: %d exchanges revoked, 1 to %d", ErrFrame, len(r.Exchanges), MaxRevoke)
	}
	b = append(b, Version, byte(len(r.Exchanges)))
	for _, x := range r.Exchanges {
		b = append(b, x[:]...)
	}
	return b, nil
}

func (s Session) appendBody(b []byte) ([]byte, error) {
	return append(append(append(b, Version), s.ID[:]...), 0), nil
}

func (r Resume) appendBody(b []byte) ([]byte, error) {
	return binary.BigEndian.AppendUint64(append(append(b, Version), r.ID[:]...), r.Received), nil
}

func (r Resumed) appendBody(b []byte) ([]byte, error) {
	return binary.BigEndian.AppendUint64(append(b, Version), r.Received), nil
}

// AppendFrame appends the encoding of f to b.
func AppendFrame(b []byte, f Frame) ([]byte, error) {
	start := len(b)
	b = append(b, f.frameType(), 0, 0)
	b, err := f.appendBody(b)
	if err != nil {
		return nil, err
	}
	n := len(b) - start - FrameHeaderLen
	if n > MaxFrameBody {
		return nil, fmt.Errorf("%w: body of %d bytes exceeds %d", ErrFrame, n, MaxFrameBody)
	}
	binary.BigEndian.PutUint16(b[start+1:], uint16(n))
	return b, nil
}

// WriteFrame writes f to w in one Write.
func WriteFrame(w io.Writer, f Frame) error {
	b, err := AppendFrame(make([]byte, 0, 64), f)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ReadFrame reads exactly one frame from r, never more bytes than the frame
// holds (the session's bytes follow it on the same stream). Bodies longer
// than max (or MaxFrameBody, if max is 0 or larger) are refused before
// anything is allocated.
func ReadFrame(r io.Reader, max int) (Frame, error) {
	if max <= 0 || max > MaxFrameBody {
		max = MaxFrameBody
	}
	var hdr [FrameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[1:]))
	if n > max {
		return nil, fmt.Errorf("%w: frame body of %d bytes exceeds the limit of %d", ErrFrame, n, max)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return parseBody(hdr[0], body)
}

// ParseFrame decodes one whole frame held in b, which must contain nothing
// else.
func ParseFrame(b []byte) (Frame, error) {
	if len(b) < FrameHeaderLen {
		return nil, fmt.Errorf("%w: %d bytes is shorter than a frame header", ErrFrame, len(b))
	}
	n := int(binary.BigEndian.Uint16(b[1:]))
	if n > MaxFrameBody {
		return nil, fmt.Errorf("%w: frame body of %d bytes exceeds the limit of %d", ErrFrame, n, MaxFrameBody)
	}
	if len(b)-FrameHeaderLen != n {
		return nil, fmt.Errorf("%w: header says %d body bytes, have %d", ErrFrame, n, len(b)-FrameHeaderLen)
	}
	return parseBody(b[0], b[FrameHeaderLen:])
}

// body is a cursor over a frame body.
type body struct {
	b   []byte
	err error
}

// take returns the next n bytes of the body, or nil once the body has
// failed.
func (d *body) take(field string, n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.err = fmt.Errorf("%w: body ends before %s", ErrFrame, field)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *body) u8(field string) uint8 {
	if b := d.take(field, 1); b != nil {
		return b[0]
	}
	return 0
}

func (d *body) u16(field string) uint16 {
	if b := d.take(field, 2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (d *body) u64(field string) uint64 {
	if b := d.take(field, 8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (d *body) u32(field string) uint32 {
	if b := d.take(field, 4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

// bytes fills dst from the body.
func (d *body) bytes(field string, dst []byte) { copy(dst, d.take(field, len(dst))) }

func (d *body) str8(field string, max int) string {
	n := int(d.u8(field + " length"))
	if d.err != nil {
		return ""
	}
	if n > max {
		d.err = fmt.Errorf("%w: %s is %d bytes, at most %d", ErrFrame, field, n, max)
		return ""
	}
	return string(d.take(field, n))
}

// addr reads a family byte (4 or 6; 0 too when zeroOK) and the address.
func (d *body) addr(field string, zeroOK bool) netip.Addr {
	switch fam := d.u8(field + " family"); {
	case d.err != nil:
	case fam == 4:
		var a [4]byte
		d.bytes(field, a[:])
		return netip.AddrFrom4(a)
	case fam == 6:
		var a [16]byte
		d.bytes(field, a[:])
		return netip.AddrFrom16(a)
	case fam == 0 && zeroOK:
	default:
		d.err = fmt.Errorf("%w: %s family %d, want 4 or 6", ErrFrame, field, fam)
	}
	return netip.Addr{}
}

func (d *body) candidates() []Candidate {
	n := int(d.u8("candidate count"))
	if d.err == nil && n > MaxCandidates {
		d.err = fmt.Errorf("%w: %d candidates, at most %d", ErrFrame, n, MaxCandidates)
	}
	if d.err != nil || n == 0 {
		return nil
	}
	cs := make([]Candidate, 0, n)
	for range n {
		k := CandidateKind(d.u8("candidate kind"))
		a := d.addr("candidate address", false)
		p := d.u16("candidate port")
		cs = append(cs, Candidate{Kind: k, Addr: netip.AddrPortFrom(a, p)})
	}
	return cs
}

// connect reads a Connect body: version, port, device and access code.
func (d *body) connect() Connect {
	d.version()
	var c Connect
	c.Port = d.u16("port")
	c.Device = d.str8("device", MaxDeviceLen)
	c.AccessCode = d.str8("access code", MaxSecretLen)
	return c
}

func (d *body) version() {
	if v := d.u8("version"); d.err == nil && v != Version {
		d.err = fmt.Errorf("%w: protocol version %d, this end speaks %d", ErrFrame, v, Version)
	}
}

func (d *body) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d bytes after the last field", ErrFrame, len(d.b))
	}
	return d.err
}

func parseBody(typ byte, b []byte) (Frame, error) {
	d := &body{b: b}
	var f Frame
	switch typ {
	case FrameHello:
		d.version()
		var h Hello
		h.Device = d.str8("device", MaxDeviceLen)
		h.Token = d.str8("token", MaxSecretLen)
		f = h
	case FrameConnect:
		f = d.connect()
	case FrameOpen:
		d.version()
		f = Open{Port: d.u16("port")}
	case FrameResult:
		var r Result
		r.Status = Status(d.u8("status"))
		r.Message = d.str8("message", MaxMessageLen)
		f = r
	case FrameInfo:
		d.version()
		f = Info{}
	case FrameRelayInfo:
		d.version()
		var r RelayInfo
		flags := d.u8("flags")
		if d.err == nil && flags&^1 != 0 {
			d.err = fmt.Errorf("%w: unknown flags %#x", ErrFrame, flags)
		}
		r.Direct = flags&1 != 0
		a := d.addr("STUN address", true)
		port := d.u16("STUN port")
		if !a.IsValid() {
			a = netip.IPv4Unspecified()
			if port == 0 {
				a = netip.Addr{}
			}
		} else if a.IsUnspecified() {
			d.err = fmt.Errorf("%w: an unspecified STUN address is sent as family 0", ErrFrame)
		}
		if a.IsValid() {
			r.STUN = netip.AddrPortFrom(a, port)
		}
		f = r
	case FrameDirect:
		d.version()
		var r Direct
		r.Device = d.str8("device", MaxDeviceLen)
		r.AccessCode = d.str8("access code", MaxSecretLen)
		d.bytes("exchange id", r.Exchange[:])
		d.bytes("key", r.Key[:])
		r.Candidates = d.candidates()
		f = r
	case FramePunch:
		d.version()
		var p Punch
		d.bytes("exchange id", p.Exchange[:])
		d.bytes("key", p.Key[:])
		p.Candidates = d.candidates()
		f = p
	case FrameCandidates:
		d.version()
		f = Candidates{Candidates: d.candidates()}
	case FrameDirectHello:
		d.version()
		var h DirectHello
		d.bytes("exchange id", h.Exchange[:])
		d.bytes("proof", h.Proof[:])
		f = h
	case FrameReport:
		d.version()
		var r Report
		r.Device = d.str8("device", MaxDeviceLen)
		r.Outcome = PunchOutcome(d.u8("outcome"))
		r.Local = CandidateKind(d.u8("local kind"))
		r.Remote = CandidateKind(d.u8("remote kind"))
		r.Millis = d.u32("milliseconds")
		f = r
	case FrameMeshHello:
		d.version()
		var h MeshHello
		h.Node = d.str8("node", MaxDeviceLen)
		h.Key = d.str8("mesh key", MaxSecretLen)
		f = h
	case FrameForward:
		c := d.connect() // a Forward begins as the Connect it carries
		r := Forward{Port: c.Port, Device: c.Device, AccessCode: c.AccessCode}
		a := d.addr("client address", false)
		r.Client = netip.AddrPortFrom(a, d.u16("client port"))
		f = r
	case FrameRevoke:
		d.version()
		n := int(d.u8("count"))
		if d.err == nil && (n == 0 || n > MaxRevoke) {
			d.err = fmt.Errorf("%w: %d exchanges revoked, 1 to %d", ErrFrame, n, MaxRevoke)
		}
		var r Revoke
		for i := 0; i < n && d.err == nil; i++ {
			var x [ExchangeIDLen]byte
			d.bytes("exchange id", x[:])
			r.Exchanges = append(r.Exchanges, x)
		}
		f = r
	case FrameSession:
		d.version()
		var s Session
		d.bytes("session id", s.ID[:])
		if flags := d.u8("flags"); d.err == nil && flags != 0 {
			d.err = fmt.Errorf("%w: unknown session flags %#x", ErrFrame, flags)
		}
		f = s
	case FrameResume:
		d.version()
		var r Resume
		d.bytes("session id", r.ID[:])
		r.Received = d.u64("received")
		f = r
	case FrameResumed:
		d.version()
		f = Resumed{Received: d.u64("received")}
	default:
		return nil, fmt.Errorf("%w: unknown frame type %#x", ErrFrame, typ)
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	return f, nil
}

// Record is one record of a resumable session (RecordData, RecordAck or
// RecordEnd).
type Record struct {
	Type byte
	// Data is a Data record's bytes.
	Data []byte
	// Count is an Ack's received count, an End's offset.
	Count uint64
	// Closed is an End's bit 0: its writer reads no more either.
	Closed bool
}

// endClosed is an End's flag bit: the writer reads no more.
const endClosed = 1

// AppendRecord appends the encoding of r to b.
func AppendRecord(b []byte, r Record) ([]byte, error) {
	switch r.Type {
	case RecordData:
		if len(r.Data) == 0 || len(r.Data) > MaxRecordData {
			return nil, fmt.Errorf("%w: data record of %d bytes, 1 to %d", ErrFrame, len(r.Data), MaxRecordData)
		}
		return append(binary.BigEndian.AppendUint16(append(b, RecordData), uint16(len(r.Data))), r.Data...), nil
	case RecordAck:
		return binary.BigEndian.AppendUint64(append(b, RecordAck, 0, 8), r.Count), nil
	case RecordEnd:
		var flags byte
		if r.Closed {
			flags = endClosed
		}
		return append(binary.BigEndian.AppendUint64(append(b, RecordEnd, 0, 9), r.Count), flags), nil
	}
	return nil, fmt.Errorf("%w: unknown record type %#x", ErrFrame, r.Type)
}

// checkRecordHeader checks a record's type and body length.
func checkRecordHeader(typ byte, n int) error {
	switch {
	case typ == RecordData && n == 0:
		return fmt.Errorf("%w: empty data record", ErrFrame)
	case typ == RecordData:
		return nil
	case typ == RecordAck && n != 8, typ == RecordEnd && n != 9:
		return fmt.Errorf("%w: record type %#x with a body of %d bytes", ErrFrame, typ, n)
	case typ == RecordAck, typ == RecordEnd:
		return nil
	}
	return fmt.Errorf("%w: unknown record type %#x", ErrFrame, typ)
}

// parseRecordBody decodes the body of an Ack or End record (the header
// checked); Data's body is the bytes themselves.
func parseRecordBody(typ byte, b []byte) (Record, error) {
	r := Record{Type: typ}
	switch typ {
	case RecordData:
		r.Data = b
	case RecordAck:
		r.Count = binary.BigEndian.Uint64(b)
	case RecordEnd:
		r.Count = binary.BigEndian.Uint64(b)
		if b[8]&^endClosed != 0 {
			return Record{}, fmt.Errorf("%w: unknown end flags %#x", ErrFrame, b[8])
		}
		r.Closed = b[8]&endClosed != 0
	}
	return r, nil
}

// ParseRecord decodes one whole record held in b, which must contain
// nothing else; a Data record's bytes alias b.
func ParseRecord(b []byte) (Record, error) {
	if len(b) < FrameHeaderLen {
		return Record{}, fmt.Errorf("%w: %d bytes is shorter than a record header", ErrFrame, len(b))
	}
	n := int(binary.BigEndian.Uint16(b[1:]))
	if len(b)-FrameHeaderLen != n {
		return Record{}, fmt.Errorf("%w: header says %d body bytes, have %d", ErrFrame, n, len(b)-FrameHeaderLen)
	}
	if err := checkRecordHeader(b[0], n); err != nil {
		return Record{}, err
	}
	return parseRecordBody(b[0], b[FrameHeaderLen:])
}

// Probe constants (see "Direct paths" above).
const (
	// ProbeLen is the size of every probe datagram.
	ProbeLen = 63
	// ProbePing and ProbePong are the probe types.
	ProbePing = 1
	ProbePong = 2
	// ProbeFromClient and ProbeFromAgent say who sent a probe.
	ProbeFromClient = 1
	ProbeFromAgent  = 2

	probeTxLen       = 12
	probeObservedOff = 28
	probeMACOff      = 47
	probeMACLen      = 16
)

// ProbeMagic starts every probe.
var ProbeMagic = [4]byte{0x3e, 'n', 'r', 'p'}

// Domain separation of the exchange key's two uses.
const (
	probeLabel = "nasreach-probe/1"
	proofLabel = "nasreach-direct/1"
)

// Probe is a ping or a pong between the two ends of an exchange.
type Probe struct {
	Type     byte // ProbePing or ProbePong
	Sender   byte // ProbeFromClient or ProbeFromAgent
	Exchange [ExchangeIDLen]byte
	Tx       [probeTxLen]byte
	// Observed is, in a pong, where the ping came from; zero in a ping.
	Observed netip.AddrPort
}

// AppendProbe appends p, authenticated with the exchange's key, to b.
func AppendProbe(b []byte, p Probe, key *[KeyLen]byte) []byte {
	start := len(b)
	b = append(b, ProbeMagic[:]...)
	b = append(b, Version, p.Type, p.Sender, 0)
	b = append(b, p.Exchange[:]...)
	b = append(b, p.Tx[:]...)
	var obs [19]byte
	if a := p.Observed.Addr().Unmap(); a.Is4() {
		obs[0] = 4
		a4 := a.As4()
		copy(obs[1:], a4[:])
	} else if a.IsValid() {
		obs[0] = 6
		a16 := a.As16()
		copy(obs[1:], a16[:])
	}
	if obs[0] != 0 {
		binary.BigEndian.PutUint16(obs[17:], p.Observed.Port())
	}
	b = append(b, obs[:]...)
	mac := probeMAC(key, b[start:])
	return append(b, mac[:probeMACLen]...)
}

// IsProbe reports whether b is shaped like a probe (it may still fail
// ParseProbe's checks): the cheap test a socket's demultiplexer makes.
func IsProbe(b []byte) bool {
	return len(b) == ProbeLen && [4]byte(b[:4]) == ProbeMagic
}

// ParseProbe decodes a probe without checking its MAC, which needs the key
// of the exchange it names (VerifyProbe).
func ParseProbe(b []byte) (Probe, error) {
	var p Probe
	if !IsProbe(b) {
		return p, fmt.Errorf("%w: not a probe", ErrFrame)
	}
	if b[4] != Version || (b[5] != ProbePing && b[5] != ProbePong) ||
		(b[6] != ProbeFromClient && b[6] != ProbeFromAgent) || b[7] != 0 {
		return p, fmt.Errorf("%w: probe header %x", ErrFrame, b[4:8])
	}
	p.Type, p.Sender = b[5], b[6]
	copy(p.Exchange[:], b[8:16])
	copy(p.Tx[:], b[16:probeObservedOff])
	obs := b[probeObservedOff:probeMACOff]
	port := binary.BigEndian.Uint16(obs[17:])
	switch {
	case obs[0] == 4 && [12]byte(obs[5:17]) == [12]byte{}:
		p.Observed = netip.AddrPortFrom(netip.AddrFrom4([4]byte(obs[1:5])), port)
	case obs[0] == 6 && !netip.AddrFrom16([16]byte(obs[1:17])).Is4In6():
		p.Observed = netip.AddrPortFrom(netip.AddrFrom16([16]byte(obs[1:17])), port)
	case obs[0] == 0 && [19]byte(obs) == [19]byte{}:
	default:
		return p, fmt.Errorf("%w: probe's observed address %x", ErrFrame, obs)
	}
	if (p.Type == ProbePing) == p.Observed.IsValid() {
		return p, fmt.Errorf("%w: a ping carries no observed address, a pong does", ErrFrame)
	}
	return p, nil
}

// VerifyProbe reports whether the probe b carries a valid MAC for key.
func VerifyProbe(b []byte, key *[KeyLen]byte) bool {
	if len(b) != ProbeLen {
		return false
	}
	mac := probeMAC(key, b[:probeMACOff])
	return hmac.Equal(mac[:probeMACLen], b[probeMACOff:])
}

func probeMAC(key *[KeyLen]byte, msg []byte) []byte {
	h := hmac.New(sha256.New, key[:])
	h.Write([]byte(probeLabel))
	h.Write(msg)
	return h.Sum(nil)
}

// DirectProof is the proof a DirectHello carries for an exchange.
func DirectProof(exchange [ExchangeIDLen]byte, key *[KeyLen]byte) [ProofLen]byte {
	h := hmac.New(sha256.New, key[:])
	h.Write([]byte(proofLabel))
	h.Write(exchange[:])
	return [ProofLen]byte(h.Sum(nil))
}
