package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nasreach/nasreach/store"
)

// AdminTokenFile is the file in the data directory that holds the admin
// token when the configuration gives none.
const AdminTokenFile = "admin.token"

// ensureAdminToken returns the admin token: the given one, or the one in
// <data>/admin.token, created (mode 0600) on first start.
func ensureAdminToken(dataDir, given string) (token, file string, err error) {
	if given != "" {
		return given, "", nil
	}
	file = filepath.Join(dataDir, AdminTokenFile)
	if b, err := os.ReadFile(file); err == nil {
		if t := strings.TrimSpace(string(b)); t != "" {
			return t, file, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", "", fmt.Errorf("read admin token %s: %w", file, err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", "", fmt.Errorf("create data directory %s: %w", dataDir, err)
	}
	t, err := store.NewToken()
	if err != nil {
		return "", "", err
	}
	if err := os.WriteFile(file, []byte(t+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("write admin token %s: %w", file, err)
	}
	return t, file, nil
}
