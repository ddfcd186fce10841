package api

import (
	"context"
	"net"
	"net/http"
)

// The local operator's way in. A daemon offers the API on a Unix socket in
// its data directory as well, which only the daemon's user (and root) can
// open; whoever connects there is the operator, as with knotc and
// unbound-control. Requests on it need no token and are never throttled, so
// a network attacker who locks 127.0.0.1 out by failing logins does not
// lock out the operator at the console.

// localKey marks the context of a request that came in on the local
// listener.
type localKey struct{}

// localListener wraps the local socket's listener so that the server can
// tell its connections from the network's.
type localListener struct{ net.Listener }

func (l localListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return localConn{c}, nil
}

// localConn is a connection accepted on the local listener.
type localConn struct{ net.Conn }

// connContext marks connections from the local listener (http.Server's
// ConnContext).
func connContext(ctx context.Context, c net.Conn) context.Context {
	if _, ok := c.(localConn); ok {
		return context.WithValue(ctx, localKey{}, true)
	}
	return ctx
}

// isLocal reports whether r came in on the local listener.
func isLocal(r *http.Request) bool {
	local, _ := r.Context().Value(localKey{}).(bool)
	return local
}
