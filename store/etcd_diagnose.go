package store

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"
)

// diagnoseClientCert tells why etcd may have refused this node, when a
// request to the cluster failed: a member that wants client certificates
// (--client-cert-auth) and gets none, or one it does not trust, closes the
// TLS connection, and the etcd client only retries until its deadline
// ("context deadline exceeded"), which does not tell an operator to look at
// --etcd-cert and --etcd-key. It makes one TLS connection to the first
// endpoint with the node's client certificate and reports the alert the
// member sends, or nil when there is none to report. It checks only whether
// the member accepts this node (the member's own certificate is the etcd
// client's to verify) and sends nothing over the connection.
func diagnoseClientCert(ec EtcdConfig) error {
	conf, err := etcdTLS(ec)
	if err != nil || conf == nil || len(ec.Endpoints) == 0 {
		return nil
	}
	u, err := url.Parse(ec.Endpoints[0])
	if err != nil {
		return nil
	}
	network, addr := "tcp", u.Host
	switch u.Scheme {
	case "https":
	case "unixs":
		network, addr = "unix", u.Host+u.Path
	default:
		return nil // not TLS
	}
	probe := conf.Clone()
	probe.InsecureSkipVerify = true //nolint:gosec // only asks whether the member accepts this node; nothing is sent
	deadline := time.Now().Add(2 * time.Second)
	c, err := tls.DialWithDialer(&net.Dialer{Deadline: deadline}, network, addr, probe)
	if err == nil {
		// In TLS 1.3 a member's verdict on the client certificate comes
		// after the client's handshake: read it.
		c.SetReadDeadline(deadline)
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if !isRemoteTLSError(err) {
		return nil
	}
	why := "this node sent no client certificate (set --etcd-cert and --etcd-key)"
	if len(conf.Certificates) > 0 {
		why = "it does not accept the client certificate " + ec.CertFile
	}
	return fmt.Errorf("etcd member %s refused this node: %s: %v", ec.Endpoints[0], why, err)
}

// isRemoteTLSError reports whether err is an alert the peer sent, which
// crypto/tls returns as "remote error: tls: …".
func isRemoteTLSError(err error) bool {
	var op *net.OpError
	if !errors.As(err, &op) {
		return false
	}
	return op.Op == "remote error"
}
