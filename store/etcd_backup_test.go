package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fillForBackup gives s devices with addresses, access codes, a TSIG key
// and a deleted (quarantined) name: everything a snapshot must carry.
func fillForBackup(t *testing.T, s Backend) {
	t.Helper()
	ctx := context.Background()
	mustCreate(t, s, "nas1")
	mustCreate(t, s, "nas2")
	mustCreate(t, s, "gone")
	if _, _, err := s.SetAddress(ctx, "nas1", AddressUpdate{IPv4: v4a, IPv6: v6a}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.AddAccessCode(ctx, "nas1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.IssueTSIGKey(ctx, "nas2"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
}

// sameTable fails the test unless got holds what want holds: the devices,
// their access codes, the serial, what resolves, and the quarantine of the
// deleted name.
func sameTable(t *testing.T, what string, want, got Backend) {
	t.Helper()
	wl, err := want.List()
	if err != nil {
		t.Fatal(err)
	}
	gl, err := got.List()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(wl, gl) {
		t.Errorf("%s: devices\n%+v\nwant\n%+v", what, gl, wl)
	}
	for _, d := range wl {
		wc, _ := want.AccessCodes(d.Name)
		gc, _ := got.AccessCodes(d.Name)
		if len(wc) != len(gc) || (len(wc) > 0 && !reflect.DeepEqual(wc, gc)) {
			t.Errorf("%s: access codes of %s = %+v, want %+v", what, d.Name, gc, wc)
		}
		wr, wok := want.Lookup(d.Name)
		gr, gok := got.Lookup(d.Name)
		if wok != gok || !wr.Equal(gr) {
			t.Errorf("%s: Lookup(%s) = %v %v, want %v %v", what, d.Name, gr, gok, wr, wok)
		}
	}
	if got.Serial() != want.Serial() {
		t.Errorf("%s: serial %d, want %d", what, got.Serial(), want.Serial())
	}
	if _, _, err := got.Create(context.Background(), "gone", CreateOptions{}); !errors.Is(err, ErrQuarantined) {
		t.Errorf("%s: Create of the deleted name = %v, want ErrQuarantined", what, err)
	}
}

// TestBackupIsAStoreFileServeStartsFrom: on either store, Backup writes a
// bbolt store file that store check finds sound and that a bbolt store
// opens with every device, access code, quarantine and the serial; so an
// etcd cluster's table can be moved to one bbolt node.
func TestBackupIsAStoreFileServeStartsFrom(t *testing.T) {
	forEachBackend(t, func(t *testing.T, open openFunc) {
		s := open(t, Config{SweepEvery: -1})
		if e, ok := s.(*Etcd); ok {
			e.zonePage = 2 // the table is read in several pages
		}
		fillForBackup(t, s)
		var buf bytes.Buffer
		n, err := s.Backup(&buf)
		if err != nil || n != int64(buf.Len()) {
			t.Fatalf("Backup = %d, %v; wrote %d bytes", n, err, buf.Len())
		}
		dir := t.TempDir()
		path := filepath.Join(dir, FileName)
		if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := Check(path, true)
		if err != nil {
			t.Fatalf("Check of the snapshot: %v", err)
		}
		if r.Devices != 2 || r.AccessCodes != 1 || r.Quarantined != 1 || r.Schema != SchemaVersion {
			t.Errorf("Check = %+v; want 2 devices, 1 access code, 1 quarantined name, schema %d", r, SchemaVersion)
		}
		sameTable(t, "bbolt store opened on the snapshot", s, openStore(t, Config{Dir: dir, SweepEvery: -1}))
	})
}

// TestImportMovesABackupIntoAnEmptyEtcdPrefixOnly: a snapshot imported
// into an empty prefix is the table it was taken from (the way back from
// bbolt to etcd, and the restore of an etcd table); a prefix that holds a
// table already is refused, untouched.
func TestImportMovesABackupIntoAnEmptyEtcdPrefixOnly(t *testing.T) {
	from := openEtcdAt(t, Config{SweepEvery: -1}, etcdPrefix(t, ""))
	fillForBackup(t, from)
	path := filepath.Join(t.TempDir(), "snapshot.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := from.Backup(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	prefix := etcdPrefix(t, "")
	ec := EtcdConfig{Endpoints: etcdEndpoints(t), Prefix: prefix}
	rep, err := ImportEtcd(context.Background(), path, ec)
	if err != nil {
		t.Fatalf("ImportEtcd: %v", err)
	}
	if rep.Devices != 2 || rep.AccessCodes != 1 || rep.Quarantined != 1 || rep.Serial != from.Serial() {
		t.Errorf("ImportEtcd = %+v; want 2 devices, 1 access code, 1 quarantined, serial %d", rep, from.Serial())
	}
	to := openEtcdAt(t, Config{SweepEvery: -1}, prefix)
	sameTable(t, "etcd table imported from the snapshot", from, to)

	_, err = ImportEtcd(context.Background(), path, ec)
	if err == nil || !strings.Contains(err.Error(), "import only into an empty prefix") {
		t.Fatalf("second ImportEtcd into the same prefix = %v, want a refusal", err)
	}
	sameTable(t, "etcd table after a refused import", from, to)
}
