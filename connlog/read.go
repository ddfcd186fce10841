package connlog

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"
)

// Record is one line of a connection log as read back.
type Record struct {
	Time     time.Time `json:"time"`
	Service  string    `json:"service"`
	Kind     string    `json:"kind"`
	Outcome  string    `json:"outcome,omitempty"`
	Device   string    `json:"device,omitempty"`
	Client   string    `json:"client,omitempty"` // masked
	Port     uint16    `json:"port,omitempty"`
	Start    time.Time `json:"start,omitzero"`
	BytesIn  int64     `json:"bytes_in,omitempty"`
	BytesOut int64     `json:"bytes_out,omitempty"`
	Peers    int       `json:"peers,omitempty"`
	Detail   string    `json:"detail,omitempty"`
}

// maxLine bounds one log line when reading back.
const maxLine = 64 << 10

// Open opens a log file for reading, decrypting .age files with ids.
func Open(path string, ids []age.Identity) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open connection log: %w", err)
	}
	if !strings.HasSuffix(path, ".age") {
		return f, nil
	}
	if len(ids) == 0 {
		f.Close()
		return nil, fmt.Errorf("%s is encrypted: give the private key with --key", path)
	}
	r, err := age.Decrypt(bufio.NewReader(f), ids...)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("decrypt %s: %w", path, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{r, f}, nil
}

// ReadFile calls fn for every record of a log file.
func ReadFile(path string, ids []age.Identity, fn func(Record) error) error {
	rc, err := Open(path, ids)
	if err != nil {
		return err
	}
	defer rc.Close()
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 4096), maxLine)
	for n := 1; sc.Scan(); n++ {
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return fmt.Errorf("%s line %d: %w", path, n, err)
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

// LoadIdentities reads age private keys from a key file.
func LoadIdentities(path string) ([]age.Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open key file: %w", err)
	}
	defer f.Close()
	ids, err := age.ParseIdentities(f)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return ids, nil
}

// LoadRecipients reads age public keys (one per line, # comments allowed).
func LoadRecipients(path string) ([]age.Recipient, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open public key file: %w", err)
	}
	defer f.Close()
	rs, err := age.ParseRecipients(f)
	if err != nil {
		return nil, fmt.Errorf("public key file %s: %w", path, err)
	}
	return rs, nil
}

// Files lists the connection log files in dir, oldest day first, as paths.
func Files(dir string) ([]string, error) {
	files, err := datedFiles(dir, filePrefix)
	if err != nil {
		return nil, err
	}
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = filepath.Join(dir, f.name)
	}
	return paths, nil
}
