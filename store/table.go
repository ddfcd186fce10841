package store

import (
	"encoding/binary"
	"hash/maphash"
	"math/bits"
	"net/netip"
	"sync/atomic"
	"unsafe"
)

// devTable holds the index's entries compactly, for a million devices and
// more: not a Go map of structs and strings, whose buckets, string headers
// and padding cost about 170–270 bytes a device, but each entry packed into
// a byte arena (rev, flags, name, the addresses: 30–50 bytes) and an
// open-addressing table of 8-byte slots, each a hash tag and the entry's
// offset, so that a lookup compares names only when the tags match. The
// rare parts of an entry (ACME challenge values, a TSIG key) sit in a side
// slice that an entry points into.
//
// Readers take no lock. Entries are written once and never changed: a
// writer appends the new version of an entry to the arena, past anything a
// reader can reach, and then publishes it with an atomic store of its slot,
// so a reader sees either the old version or the whole new one. When the
// arena, the side slice or the slots run out, the writer builds a new table
// with the live entries alone (the old versions are dropped) and swaps the
// index's pointer to it; readers that still hold the old table finish on
// it. Writers must be serialized by the caller.
type devTable struct {
	seed  maphash.Seed
	slots []atomic.Uint64 // tag<<32 | offset+1; 0 is an empty slot
	// The arena and the side slice are allocated at their full length
	// and never resliced, since readers read their headers.
	arena  []byte // entries at arena[:used]
	used   int
	extra  []*entryExtra // used up to extraN
	extraN int

	names   int          // the names the table holds, hidden ones included
	live    int          // bytes of the arena that current entries use
	visible atomic.Int64 // the entries that are not hidden (Len)
}

// entryExtra is the part of an entry that few devices have.
type entryExtra struct {
	acme []string
	key  *TSIGKey
}

// The flags byte of a packed entry.
const (
	flagHidden = 1 << iota
	flagIPv4
	flagIPv6
	flagExtra
)

// A packed entry: rev (8 bytes, little endian), flags (1), name length (1),
// the name, then the IPv4 address (4) with flagIPv4, the IPv6 address (16)
// with flagIPv6, and the index into extra (4) with flagExtra.
const entryHead = 10

// Room a new table leaves beyond what its live entries use, so that a
// steady stream of updates rebuilds it rarely: a quarter more, and at least
// this many bytes.
const minTableRoom = 64 << 10

// newDevTable returns an empty table with room for about n entries.
func newDevTable(n int) *devTable {
	t := &devTable{seed: maphash.MakeSeed()}
	t.alloc(n, n*48+minTableRoom, n/16+16)
	return t
}

// alloc sizes the slots for n names at a load of at most 3/4, and the
// arena and side slice with the room given.
func (t *devTable) alloc(n, arena, extra int) {
	size := 1 << bits.Len(uint(n*4/3+8))
	t.slots = make([]atomic.Uint64, size)
	t.arena = make([]byte, arena)
	t.extra = make([]*entryExtra, extra)
}

// get returns the entry of name.
func (t *devTable) get(name string) (entry, bool) {
	return t.getBytes(unsafe.Slice(unsafe.StringData(name), len(name)))
}

// getBytes returns the entry of name, without making a string of it.
func (t *devTable) getBytes(name []byte) (entry, bool) {
	off, ok := t.find(name)
	if !ok {
		return entry{}, false
	}
	return t.decode(off), true
}

// find returns the offset of name's entry in the arena.
func (t *devTable) find(name []byte) (int, bool) {
	_, _, v := t.probe(name)
	if v == 0 {
		return 0, false
	}
	return int(uint32(v)) - 1, true
}

// probe returns name's slot and the value it holds (0: name is absent, and
// i is the empty slot where it goes), and the name's tag.
func (t *devTable) probe(name []byte) (i uint64, tag uint64, v uint64) {
	h := maphash.Bytes(t.seed, name)
	mask := uint64(len(t.slots) - 1)
	tag = h >> 32 << 32
	for i = h & mask; ; i = (i + 1) & mask {
		v = t.slots[i].Load()
		if v == 0 {
			return i, tag, 0
		}
		if v&^0xffffffff == tag && string(t.nameAt(int(uint32(v))-1)) == string(name) {
			return i, tag, v
		}
	}
}

// nameAt returns the name of the entry at off.
func (t *devTable) nameAt(off int) []byte {
	n := int(t.arena[off+9])
	return t.arena[off+entryHead : off+entryHead+n]
}

// decode returns the entry at off.
func (t *devTable) decode(off int) entry {
	a := t.arena[off:]
	e := entry{rev: binary.LittleEndian.Uint64(a), hidden: a[8]&flagHidden != 0}
	flags, p := a[8], entryHead+int(a[9])
	if flags&flagIPv4 != 0 {
		e.rec.IPv4 = netip.AddrFrom4([4]byte(a[p : p+4]))
		p += 4
	}
	if flags&flagIPv6 != 0 {
		e.rec.IPv6 = netip.AddrFrom16([16]byte(a[p : p+16]))
		p += 16
	}
	if flags&flagExtra != 0 {
		x := t.extra[binary.LittleEndian.Uint32(a[p:])]
		e.rec.ACME, e.key = x.acme, x.key
	}
	return e
}

// size is the bytes e takes packed under name.
func entrySize(name string, e entry) int {
	n := entryHead + len(name)
	if e.rec.IPv4.IsValid() {
		n += 4
	}
	if e.rec.IPv6.IsValid() {
		n += 16
	}
	if len(e.rec.ACME) > 0 || e.key != nil {
		n += 4
	}
	return n
}

// set makes e the entry of name and returns the table that holds it: t, or
// a new one when t had no room (the caller publishes it). Names longer
// than a DNS label are not stored (NormalizeName refuses them).
func (t *devTable) set(name string, e entry) *devTable {
	size := entrySize(name, e)
	hasExtra := len(e.rec.ACME) > 0 || e.key != nil
	if len(name) > 255 {
		return t
	}
	i, tag, old := t.probe(unsafe.Slice(unsafe.StringData(name), len(name)))
	if t.used+size > len(t.arena) || (hasExtra && t.extraN == len(t.extra)) ||
		(old == 0 && (t.names+1)*4 > len(t.slots)*3) {
		// A table that fills with new names (a start-up, a reload)
		// doubles; one that fills with new versions of the entries it
		// has only drops the old ones.
		nt := t.rebuild(size, old == 0)
		return nt.set(name, e)
	}
	off := t.used
	a := t.arena[off : off+size]
	binary.LittleEndian.PutUint64(a, e.rev)
	var flags byte
	if e.hidden {
		flags |= flagHidden
	}
	a[9] = byte(len(name))
	p := entryHead + copy(a[entryHead:], name)
	if e.rec.IPv4.IsValid() {
		flags |= flagIPv4
		v4 := e.rec.IPv4.As4()
		p += copy(a[p:], v4[:])
	}
	if e.rec.IPv6.IsValid() {
		flags |= flagIPv6
		v6 := e.rec.IPv6.As16()
		p += copy(a[p:], v6[:])
	}
	if hasExtra {
		flags |= flagExtra
		binary.LittleEndian.PutUint32(a[p:], uint32(t.extraN))
		t.extra[t.extraN] = &entryExtra{acme: e.rec.ACME, key: e.key}
		t.extraN++
	}
	a[8] = flags
	t.used += size

	if old != 0 {
		prev := int(uint32(old)) - 1
		t.live -= t.sizeAt(prev)
		if t.arena[prev+8]&flagHidden == 0 {
			t.visible.Add(-1)
		}
	} else {
		t.names++
	}
	t.live += size
	if !e.hidden {
		t.visible.Add(1)
	}
	t.slots[i].Store(tag | uint64(off+1))
	return t
}

// sizeAt is the size of the packed entry at off.
func (t *devTable) sizeAt(off int) int {
	a := t.arena[off:]
	n := entryHead + int(a[9])
	if a[8]&flagIPv4 != 0 {
		n += 4
	}
	if a[8]&flagIPv6 != 0 {
		n += 16
	}
	if a[8]&flagExtra != 0 {
		n += 4
	}
	return n
}

// rebuild returns a new table holding t's current entries, with room for
// one more entry of the given size, and a quarter more besides; or, when
// the table is growing by new names, with room for as many again. It
// copies the packed entries as they are.
func (t *devTable) rebuild(size int, growing bool) *devTable {
	names, room := t.names+1, max((t.live+size)/4, minTableRoom)
	if growing {
		names, room = 2*names, max(t.live+size, minTableRoom)
	}
	nt := &devTable{seed: t.seed, names: t.names, live: t.live}
	nt.alloc(names+names/4, t.live+size+room, t.countExtra()+1+names/64)
	nt.visible.Store(t.visible.Load())
	for i := range t.slots {
		v := t.slots[i].Load()
		if v == 0 {
			continue
		}
		off := int(uint32(v)) - 1
		n := t.sizeAt(off)
		a := nt.arena[nt.used : nt.used+n]
		copy(a, t.arena[off:off+n])
		if a[8]&flagExtra != 0 {
			x := a[n-4:]
			nt.extra[nt.extraN] = t.extra[binary.LittleEndian.Uint32(x)]
			binary.LittleEndian.PutUint32(x, uint32(nt.extraN))
			nt.extraN++
		}
		j, tag, _ := nt.probe(nt.nameAt(nt.used))
		nt.slots[j].Store(tag | uint64(nt.used+1))
		nt.used += n
	}
	return nt
}

// trimmed returns t, or a copy of it with the usual room (a quarter more
// than its entries use) when it has much more than that, as a table that
// grew by doubling has once it is filled.
func (t *devTable) trimmed() *devTable {
	names := t.names + 1
	slots := 1 << bits.Len(uint((names+names/4)*4/3+8))
	if len(t.arena)-t.used <= max(t.live/2, 2*minTableRoom) && len(t.slots) <= slots {
		return t
	}
	return t.rebuild(0, false)
}

// countExtra is the number of current entries with an extra part.
func (t *devTable) countExtra() int {
	n := 0
	for i := range t.slots {
		if v := t.slots[i].Load(); v != 0 && t.arena[int(uint32(v))-1+8]&flagExtra != 0 {
			n++
		}
	}
	return n
}

// all yields every name and its entry, hidden ones included, in no order.
func (t *devTable) all() func(yield func(string, entry) bool) {
	return func(yield func(string, entry) bool) {
		for i := range t.slots {
			v := t.slots[i].Load()
			if v == 0 {
				continue
			}
			off := int(uint32(v)) - 1
			if !yield(string(t.nameAt(off)), t.decode(off)) {
				return
			}
		}
	}
}
