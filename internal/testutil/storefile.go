package testutil

import (
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"testing"
)

// DamagedStore is a store file damaged one way, and what the error that
// refuses it must say.
type DamagedStore struct {
	Name string
	Data []byte
	Want string // a part of the one-line error
}

// DamagedStores returns the ways the issue saw store files damaged, each
// made from healthy, a sound store file exactly as long as its pages in use
// (a snapshot from Store.Backup): empty, half of it (a backup cut short),
// zeroed, and with garbage page headers.
func DamagedStores(t testing.TB, healthy []byte) []DamagedStore {
	t.Helper()
	// The page size is in page 0's meta: after the 16-byte page header,
	// magic and version, in the machine's byte order.
	pageSize := int(binary.NativeEndian.Uint32(healthy[24:]))
	pages := len(healthy) / pageSize
	if pages < 4 || len(healthy)%pageSize != 0 {
		t.Fatalf("healthy store file of %d bytes is not at least 4 whole %d-byte pages", len(healthy), pageSize)
	}
	garbage := append([]byte(nil), healthy...)
	rnd := rand.New(rand.NewChaCha8([32]byte{16}))
	for p := 2; p < pages; p++ { // every page header but the two meta pages'
		for i := range 16 {
			garbage[p*pageSize+i] = byte(rnd.Uint32())
		}
	}
	return []DamagedStore{
		{Name: "empty", Data: []byte{}, Want: "the file is empty (0 bytes)"},
		{Name: "truncated", Data: healthy[:pages/2*pageSize], Want: "but its pages reach"},
		{Name: "zeroed", Data: make([]byte, len(healthy)), Want: "both header pages are zeroed"},
		{Name: "garbage page headers", Data: garbage, Want: "has a garbage header"},
	}
}

// FileSum returns the SHA-256 of a file's contents, to show that something
// left it alone.
func FileSum(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}
