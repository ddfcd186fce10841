package nasreach_test

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/nasreach/nasreach/"

// allowed is ARCHITECTURE.md's import table: for each package, the packages of
// this module and the outside modules it may import (the standard library is
// always allowed). A new package or dependency is added here and in
// ARCHITECTURE.md together.
var allowed = map[string][]string{
	"anonymize": {},
	// The device record, shared by the store and the API client.
	"record": {},
	// The device table: bbolt embedded, or an etcd cluster (etcd*.go).
	"store": {"record", "go.etcd.io/bbolt", "github.com/rs/zerolog", "golang.org/x/net/idna", "github.com/goccy/go-json",
		"go.etcd.io/etcd/client/v3", "go.etcd.io/etcd/api/v3", "go.uber.org/zap"},
	"connlog": {"anonymize", "github.com/rs/zerolog", "filippo.io/age"},
	"api": {"store", "connlog", "anonymize", "api/client", "internal/connlimit", "internal/netaddr", "internal/ratelimit",
		"github.com/rs/zerolog"},
	// Standard library only: the Link agent's side of the binary must not pull
	// in the store (bbolt) to call the API.
	"api/client": {"record"},
	"dnsserver":  {"store", "internal/connlimit", "internal/listen", "internal/netaddr", "github.com/miekg/dns", "github.com/rs/zerolog", "golang.org/x/sys/unix"},
	"stun": {"anonymize", "internal/connlimit", "internal/listen", "internal/netaddr", "internal/workgroup", "github.com/pion/stun/v4",
		"github.com/rs/zerolog"},
	"turnserver": {"store", "connlog", "anonymize", "internal/connlimit", "internal/listen", "internal/netaddr", "internal/workgroup",
		"github.com/pion/turn/v5", "github.com/pion/stun/v4", "github.com/pion/logging", "github.com/rs/zerolog", "golang.org/x/time"},
	"linkserver": {"store", "connlog", "anonymize", "link", "stun", "internal/connlimit", "internal/netaddr", "internal/ratelimit", "internal/workgroup",
		"github.com/quic-go/quic-go", "github.com/rs/zerolog"},
	"link": {"stun", "api/client", "internal/netaddr", "internal/workgroup", "github.com/quic-go/quic-go", "github.com/libp2p/go-yamux/v5",
		"github.com/rs/zerolog"},
	"sdnotify": {},
	// The agent's certificate for its own name, by ACME DNS-01 through the
	// API: the agent's side of the binary, so no store.
	"devicecert": {"api/client", "golang.org/x/crypto/acme", "github.com/rs/zerolog"},
	"metrics":    {"connlog", "internal/connlimit", "github.com/miekg/dns", "github.com/prometheus/client_golang", "github.com/prometheus/client_model", "github.com/rs/zerolog"},
	// The daemon wires the servers together; nothing imports it but cmd and
	// daemontest.
	"daemon": {"store", "connlog", "api", "dnsserver", "metrics", "sdnotify", "stun", "turnserver", "linkserver",
		"internal/certfile", "internal/connlimit", "internal/listen", "internal/netaddr", "filippo.io/age", "github.com/miekg/dns",
		"github.com/rs/zerolog"},
	// A daemon in process for the tests of daemon and cmd, and the clients
	// they drive it with; only tests import it.
	"daemon/daemontest": {"daemon", "link", "linkserver", "stun", "github.com/miekg/dns", "github.com/pion/turn/v5",
		"github.com/rs/zerolog"},
	// internal: one helper each, shared by the servers above.
	"internal/netaddr":   {},
	"internal/listen":    {"internal/netaddr", "golang.org/x/sys"},
	"internal/certfile":  {},
	"internal/ratelimit": {},
	"internal/connlimit": {"internal/netaddr", "internal/ratelimit"},
	"internal/workgroup": {},
	"internal/testutil":  {},
	"cmd/":               {"*"}, // the binary: flags, environment and config file into daemon.Config, signals
	"bench/":             {"*"},

	// A real etcd cluster on Unix sockets for the tests of the store on
	// etcd; only tests import it.
	"internal/etcdtest": {"go.etcd.io/etcd/client/v3", "go.uber.org/zap"},

	// An Internet of network namespaces for tests (docs/NATLAB.md); only
	// tests import it.
	"internal/natlab": {"internal/testutil", "golang.org/x/sys"},
}

// TestImportsFollowArchitecture fails when a package imports something the
// architecture does not allow, e.g. dnsserver reaching into api.
func TestImportsFollowArchitecture(t *testing.T) {
	out, err := exec.Command("go", "list", "-json=ImportPath,Imports", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkg := strings.TrimPrefix(p.ImportPath, module)
		if pkg == "github.com/nasreach/nasreach" {
			continue // this test
		}
		rules, ok := allowed[pkg]
		for prefix, r := range allowed {
			if strings.HasSuffix(prefix, "/") && strings.HasPrefix(pkg, prefix) {
				rules, ok = r, true
			}
		}
		if !ok {
			t.Errorf("package %s is not in the architecture's import table (ARCHITECTURE.md and deps_test.go)", pkg)
			continue
		}
		if slices.Contains(rules, "*") {
			continue
		}
		for _, imp := range p.Imports {
			first, _, _ := strings.Cut(imp, "/")
			if !strings.Contains(first, ".") {
				continue // standard library
			}
			name := strings.TrimPrefix(imp, module)
			if !slices.ContainsFunc(rules, func(r string) bool { return name == r || strings.HasPrefix(name, r+"/") }) {
				t.Errorf("%s imports %s, which the architecture does not allow", pkg, imp)
			}
		}
	}
}
