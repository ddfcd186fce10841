package daemon

import (
	"net/netip"
	"time"

	"filippo.io/age"
	"github.com/nasreach/nasreach/dnsserver"
	"github.com/rs/zerolog"
)

// Config is everything a daemon runs with: plain data that cmd/nasreach
// builds from flags, the environment and the TOML file. Each field's
// `setting` tag is the name of the flag (and config key) it comes from;
// Reload compares every tagged field, so a new setting needs a restart
// unless Reload is taught to apply it live. Fields tagged "-" are wiring,
// not settings.
type Config struct {
	DataDir    string `setting:"data"`
	StoreCheck bool   `setting:"store-check"` // store.Config.FullCheck; the quick checks always run
	// Store says where the device table is kept (bbolt in DataDir, or etcd).
	Store       StoreConfig
	Zone        string `setting:"zone"`
	DNSAddr     string `setting:"dns"`
	HTTPAddr    string `setting:"http"`
	MetricsAddr string `setting:"metrics"` // "" binds 127.0.0.1:0
	// AdminToken is the admin token; "" reads or creates <DataDir>/admin.token.
	AdminToken       string                 `setting:"admin-token"`
	NameServers      []dnsserver.NameServer `setting:"ns"`
	TTL              time.Duration          `setting:"ttl"`
	OpenRegistration bool                   `setting:"open-registration"`
	Reserved         []string               `setting:"reserved"`
	TrustedProxies   []netip.Prefix         `setting:"trusted-proxy"`
	ExactNames       bool                   `setting:"exact-names"`
	// NoDNSFastPath turns the DNS server's UDP fast path off
	// (dnsserver.Config.NoFastPath): miekg/dns then answers every query.
	NoDNSFastPath bool `setting:"dns-fast-path"`
	// CAA are the zone's CAA records (dnsserver.Config.CAA), served at the
	// apex and inherited by every device.
	CAA []string `setting:"caa"`
	// CertFile and KeyFile are the operator's TLS certificate, served by
	// TURN over TLS and the Link relay and re-read when renewed; empty: no
	// TURN over TLS, and a self-signed Link certificate in DataDir.
	CertFile string `setting:"tls-cert"`
	KeyFile  string `setting:"tls-key"`
	Transfer TransferConfig
	RRL      RRLConfig
	TURN     TURNConfig
	Link     LinkConfig
	// Cluster is this node's part in Link across nodes (cluster.go).
	Cluster  ClusterConfig
	Privacy  PrivacyConfig
	LogLevel zerolog.Level `setting:"log-level"`

	// SetLogLevel changes the level of Logger's output; cmd owns the level
	// and passes its setter. Nil makes a changed log-level need a restart.
	SetLogLevel func(zerolog.Level) `setting:"-"`
	// Version is reported in nasreach_build_info.
	Version string `setting:"-"`
	// FileLimit is the file-descriptor limit the connection caps are sized
	// from (conncaps.go); zero reads the process's (RLIMIT_NOFILE). Tests
	// set it low to reach the caps with a few hundred connections.
	FileLimit uint64 `setting:"-"`
	// Now is the clock; nil means time.Now. Tests move it by hand.
	Now func() time.Time `setting:"-"`
	// Logger receives every component's records, each with its component
	// field.
	Logger zerolog.Logger `setting:"-"`
}

// TransferConfig is who may transfer the zone and who is told of changes
// (dnsserver.TransferConfig).
type TransferConfig struct {
	// Secondaries may transfer from their address and get a NOTIFY after
	// each change.
	Secondaries []dnsserver.Secondary `setting:"secondary"`
	// TSIGKeys may sign transfers from any address, and NOTIFYs to a
	// secondary that names one.
	TSIGKeys []dnsserver.Key `setting:"tsig-key"`
}

// RRLConfig is response rate limiting of the DNS server's UDP answers
// (dnsserver.RRL). The zero value is off; a zero rate leaves its class of
// answers unlimited.
type RRLConfig struct {
	// Rate is answers (and NODATA) per second to one client network (IPv4
	// /24, IPv6 /56) for one name and type.
	Rate int `setting:"rrl-rate"`
	// NXDomainRate is NXDOMAIN answers per second to one client network,
	// every name of the zone together.
	NXDomainRate int `setting:"rrl-nxdomain-rate"`
	// ErrorRate is error answers (REFUSED, FORMERR…) per second to one
	// client network.
	ErrorRate int `setting:"rrl-error-rate"`
	// Slip: every Slip-th limited answer is sent empty with TC set, the
	// others dropped (0: drop all).
	Slip int `setting:"rrl-slip"`
	// Exempt are the client networks never limited.
	Exempt []netip.Prefix `setting:"rrl-exempt"`
}

// dns is c as the DNS server takes it.
func (c RRLConfig) dns() dnsserver.RRL {
	return dnsserver.RRL{Rate: c.Rate, NXDomainRate: c.NXDomainRate, ErrorRate: c.ErrorRate, Slip: c.Slip, Exempt: c.Exempt}
}

// TURNConfig is the STUN binding service and the TURN relay on its port.
type TURNConfig struct {
	// Addr is the STUN/TURN address, UDP and TCP; "" runs neither.
	Addr string `setting:"stun"`
	// Enabled runs the TURN relay on the STUN port; false answers STUN
	// Binding only.
	Enabled bool `setting:"turn"`
	// Software is the SOFTWARE attribute of STUN answers.
	Software string `setting:"stun-software"`
	Realm    string `setting:"turn-realm"`
	// Users are static credentials, "name:password" each.
	Users []string `setting:"turn-user"`
	// Secret enables TURN REST API credentials.
	Secret     string         `setting:"turn-secret"`
	AllowPeers []netip.Prefix `setting:"turn-allow-peer"`
	RelayIP    netip.Addr     `setting:"turn-relay-ip"`
	// TLSAddr is the TURN-over-TLS address, used when CertFile is set.
	TLSAddr        string        `setting:"turns"`
	MaxAllocations int           `setting:"turn-max-allocations"`
	UserQuota      int           `setting:"turn-user-quota"`
	MaxLifetime    time.Duration `setting:"turn-max-lifetime"` // negative: no cap
	Bandwidth      int64         `setting:"turn-bandwidth"`
}

// LinkConfig is the Link relay.
type LinkConfig struct {
	// Addr is the relay's UDP address; "" runs no Link relay.
	Addr string `setting:"link"`
	// TCPAddr is the relay's TCP address (TLS, for agents and clients
	// whose UDP is blocked); "" runs none.
	TCPAddr     string        `setting:"link-tcp"`
	MaxAgents   int           `setting:"link-max-agents"`
	MaxStreams  int           `setting:"link-max-streams"`
	StreamRate  float64       `setting:"link-stream-rate"`
	StreamBurst int           `setting:"link-stream-burst"`
	IdleTimeout time.Duration `setting:"link-idle-timeout"`
	// Direct lets the relay introduce clients to agents for direct
	// (hole-punched) paths; false keeps every byte on the relay.
	Direct bool `setting:"link-direct"`
}

// PrivacyConfig is what the daemon needs to keep its privacy promises:
// where connection logs go and for how long, and the device lifecycle
// timers.
type PrivacyConfig struct {
	// LogDir is the connection log directory; "" is <DataDir>/logs.
	LogDir        string          `setting:"log-dir"`
	LogRetention  time.Duration   `setting:"log-retention"`
	LogMaxBytes   int64           `setting:"log-max-bytes"`
	LogRecipients []age.Recipient `setting:"log-encrypt-to"`
	IPv6Bits      int             `setting:"ipv6-mask-bits"`
	// Quarantine and UninitializedTTL as in store.Config (negative
	// Quarantine disables it).
	Quarantine       time.Duration `setting:"quarantine"`
	UninitializedTTL time.Duration `setting:"uninitialized-ttl"`
	LogQueries       bool          `setting:"log-queries"`
}
