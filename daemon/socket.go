package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"github.com/rs/zerolog"
)

// SocketFile is the local operator's socket in the data directory: the API,
// with no token and no throttle, to whoever can open it (the daemon's user
// and root; the data directory is 0700 and the socket 0600). The command
// line's device and backup commands use it when it is there, as knotc and
// unbound-control use theirs.
const SocketFile = "nasreach.sock"

// maxSocketPath is the longest path a Unix socket can have on Linux
// (sun_path is 108 bytes with the terminating NUL).
const maxSocketPath = 107

// listenLocal opens <dataDir>/nasreach.sock, replacing a socket a previous
// run left behind (the store's lock already proved that no other daemon
// uses this directory). Anything else at that path is left alone and is an
// error. A data directory too deep for a socket path runs without one and
// says so: the network API with the admin token still works.
func listenLocal(dataDir string, log zerolog.Logger) (net.Listener, error) {
	path := filepath.Join(dataDir, SocketFile)
	if len(path) > maxSocketPath {
		log.Warn().Str("socket", path).Int("max_bytes", maxSocketPath).
			Msg("data directory path too long for the local operator socket; device commands need --server and the admin token")
		return nil, nil
	}
	if info, err := os.Lstat(path); err == nil {
		if info.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("local socket %s: a file that is not a socket is in the way; move it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("local socket %s: remove the one a previous run left: %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("local socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("local socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("local socket %s: %w", path, err)
	}
	return ln, nil
}
