package daemon

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

// TestClusterSettingsAreValidated: each cluster setting that cannot work
// is refused by Validate (config check), naming it.
func TestClusterSettingsAreValidated(t *testing.T) {
	etcd := StoreConfig{Backend: "etcd", EtcdEndpoints: []string{"unix:///run/etcd.sock"}}
	v4, v6 := netip.MustParseAddrPort("203.0.113.7:7443"), netip.MustParseAddrPort("[2001:db8::7]:7443")
	for _, tc := range []struct {
		name  string
		store StoreConfig
		link  string
		c     ClusterConfig
		want  []string
	}{
		{"a node on etcd with its addresses", etcd, "0.0.0.0:7443", ClusterConfig{NodeName: "fra1", Advertise: []netip.AddrPort{v4, v6}, MeshKey: "0123456789abcdefghijklmnop"}, nil},
		{"a node on etcd bound to one address advertises it", etcd, "203.0.113.7:7443", ClusterConfig{}, nil},
		{"bound to every address, nothing to advertise", etcd, "0.0.0.0:7443", ClusterConfig{}, []string{"link-advertise"}},
		{"two ports: one SRV cannot say both", etcd, "0.0.0.0:7443", ClusterConfig{Advertise: []netip.AddrPort{v4, netip.MustParseAddrPort("[2001:db8::7]:443")}}, []string{"link-advertise"}},
		{"the unspecified address is nobody's", etcd, "0.0.0.0:7443", ClusterConfig{Advertise: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:7443")}}, []string{"link-advertise"}},
		{"a short mesh key", etcd, "203.0.113.7:7443", ClusterConfig{MeshKey: "short"}, []string{"link-mesh-key"}},
		{"a node name with a slash", etcd, "203.0.113.7:7443", ClusterConfig{NodeName: "fra/1"}, []string{"node-name"}},
		{"cluster settings on bbolt", StoreConfig{}, "0.0.0.0:7443", ClusterConfig{Advertise: []netip.AddrPort{v4}, MeshKey: "0123456789abcdefghijklmnop"}, []string{"link-advertise", "link-mesh-key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{DataDir: t.TempDir(), Zone: "example.net", Store: tc.store, Link: LinkConfig{Addr: tc.link}, Cluster: tc.c}
			var got []string
			if err := cfg.Validate(); err != nil {
				for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
					var se *SettingError
					if errors.As(e, &se) {
						got = append(got, se.Setting)
					}
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Validate blamed %v, want %v", got, tc.want)
			}
		})
	}
}
