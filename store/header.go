package store

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"math/bits"
)

// This file reads the structure of a bbolt file with plain reads, before
// bbolt maps it into memory: bbolt trusts its file, so a truncated one makes it
// touch memory past the end of the file (SIGBUS) and a garbage page makes it
// panic. readHeader says what is wrong instead.
//
// The bbolt file format (go.etcd.io/bbolt, format version 2, the machine's
// byte order) as far as it is read here. The file is a whole number of pages;
// every page starts with a 16-byte header:
//
//	 0  id        uint64  the page's own number
//	 8  flags     uint16  0x01 branch, 0x02 leaf, 0x04 meta, 0x10 free list
//	10  count     uint16  elements on the page; a free list of 0xFFFF or more
//	                      stores 0xFFFF here and its count as its first uint64
//	12  overflow  uint32  how many following pages belong to this one
//
// Pages 0 and 1 are the meta pages; bbolt writes them alternately and uses the
// valid one with the higher txid. After its page header a meta page holds:
//
//	16  magic     uint32  0xED0CDAED
//	20  version   uint32  2
//	24  pageSize  uint32  the size of every page, so page 1 is at this offset
//	28  flags     uint32
//	32  root      uint64  the page of the root bucket (a branch or leaf page)
//	40  sequence  uint64
//	48  freelist  uint64  the page of the free list; ^0 when it is not stored
//	56  pgid      uint64  the high-water mark: pages 0 to pgid-1 are in use
//	64  txid      uint64  the transaction that wrote this meta page
//	72  checksum  uint64  FNV-64a of bytes 16 to 71
//
// A free list page holds its count of page numbers, each a uint64, after its
// header (after the count, for 0xFFFF or more).
//
// Limits: page sizes from 1 KiB to 16 MiB (those bbolt itself looks for), and
// a free list no longer than the pages it claims.
const (
	pageHeaderSize = 16
	metaSize       = 64 // magic to checksum
	metaSummed     = 56 // magic to txid: what the checksum covers

	boltMagic   = 0xED0CDAED
	boltVersion = 2

	flagBranch   = 0x01
	flagLeaf     = 0x02
	flagMeta     = 0x04
	flagFreelist = 0x10

	noFreelist = math.MaxUint64

	minPageSize = 1 << 10
	maxPageSize = 1 << 24
)

// byteOrder is bbolt's: it writes its structures as they are in memory.
var byteOrder = binary.NativeEndian

// header is what readHeader learnt of a sound file.
type header struct {
	pageSize uint64
	pages    uint64 // the high-water mark: pages in use
	root     uint64
	freelist uint64 // noFreelist when the free list is not stored
	txid     uint64
	free     int // pages on the free list
}

// damage is a readHeader error that says what is wrong with the file, for
// the operator, rather than why it could not be read.
type damage string

func (d damage) Error() string { return string(d) }

func damagef(format string, args ...any) damage { return damage(fmt.Sprintf(format, args...)) }

// meta is one parsed meta page.
type meta struct {
	magic, version, pageSize           uint32
	root, freelist, pgid, txid, stored uint64
	sum                                uint64 // the checksum its bytes have
	zero                               bool   // every byte of the page header and meta is zero
}

// parseMeta parses the meta page whose first bytes (page header included)
// are b, which holds at least pageHeaderSize+metaSize bytes.
func parseMeta(b []byte) meta {
	m := b[pageHeaderSize : pageHeaderSize+metaSize]
	h := fnv.New64a()
	h.Write(m[:metaSummed])
	zero := true
	for _, c := range b[:pageHeaderSize+metaSize] {
		zero = zero && c == 0
	}
	return meta{
		magic: byteOrder.Uint32(m[0:]), version: byteOrder.Uint32(m[4:]), pageSize: byteOrder.Uint32(m[8:]),
		root: byteOrder.Uint64(m[16:]), freelist: byteOrder.Uint64(m[32:]), pgid: byteOrder.Uint64(m[40:]),
		txid: byteOrder.Uint64(m[48:]), stored: byteOrder.Uint64(m[56:]), sum: h.Sum64(), zero: zero,
	}
}

// invalid says why bbolt would not use m, to follow "page 0", or "" when it
// would.
func (m meta) invalid() string {
	switch {
	case m.zero:
		return "is zeroed"
	case m.magic != boltMagic:
		return "is not a bbolt header"
	case m.version != boltVersion:
		return fmt.Sprintf("has bbolt format version %d", m.version)
	case m.stored != m.sum:
		return "fails its checksum"
	case m.pageSize < minPageSize || m.pageSize > maxPageSize:
		return fmt.Sprintf("has page size %d, out of range", m.pageSize)
	}
	return ""
}

// readMeta reads the meta page at off, or reports false when the file ends
// before it.
func readMeta(r io.ReaderAt, size, off int64) (meta, bool, error) {
	if off+pageHeaderSize+metaSize > size {
		return meta{}, false, nil
	}
	b := make([]byte, pageHeaderSize+metaSize)
	if _, err := r.ReadAt(b, off); err != nil {
		return meta{}, false, err
	}
	return parseMeta(b), true, nil
}

// readHeader checks the file of size bytes that r reads the way bbolt will
// use it: its size, both meta pages, the root page's header and the free
// list. A problem with the file is a damage error; an error reading it is
// returned as it is.
func readHeader(r io.ReaderAt, size int64) (header, error) {
	if size == 0 {
		return header{}, damage("the file is empty (0 bytes)")
	}
	cur, err := currentMeta(r, size)
	if err != nil {
		return header{}, err
	}
	h := header{pageSize: uint64(cur.pageSize), pages: cur.pgid, root: cur.root, freelist: cur.freelist, txid: cur.txid}
	usize, ps := uint64(size), h.pageSize
	switch {
	case usize < 2*ps:
		return h, damagef("the file is %d bytes, shorter than its two %d-byte header pages (truncated)", size, ps)
	case usize%ps != 0:
		return h, damagef("the file is %d bytes, not a whole number of %d-byte pages (truncated)", size, ps)
	case h.pages < 3 || h.pages > usize/ps:
		if hi, reach := bits.Mul64(h.pages, ps); h.pages >= 3 && hi == 0 {
			return h, damagef("the file is %d bytes but its pages reach %d (truncated)", size, reach)
		}
		return h, damagef("its header counts %d pages, which a %d-byte file cannot hold (garbage header)", h.pages, size)
	}
	if err := checkPage(r, h, h.root, "the root page", flagBranch, flagLeaf); err != nil {
		return h, err
	}
	if h.freelist != noFreelist {
		if h.free, err = checkFreelist(r, h); err != nil {
			return h, err
		}
	}
	return h, nil
}

// currentMeta finds the meta page bbolt would use: the valid one with the
// higher txid. Page 1's offset is the page size, which page 0 states; when
// page 0 is invalid, every page size bbolt supports is tried.
func currentMeta(r io.ReaderAt, size int64) (meta, error) {
	m0, ok, err := readMeta(r, size, 0)
	if err != nil {
		return meta{}, err
	}
	if !ok {
		return meta{}, damagef("the file is %d bytes, too short for a bbolt header (truncated)", size)
	}
	if m0.invalid() == "" {
		m1, ok, err := readMeta(r, size, int64(m0.pageSize))
		if err != nil {
			return meta{}, err
		}
		if ok && m1.invalid() == "" && m1.pageSize == m0.pageSize && m1.txid > m0.txid {
			return m1, nil
		}
		return m0, nil
	}
	var m1 meta // the page 1 to describe if none is valid
	var found1 bool
	for off := int64(minPageSize); off <= maxPageSize; off <<= 1 {
		m, ok, err := readMeta(r, size, off)
		if err != nil {
			return meta{}, err
		}
		if !ok {
			break
		}
		if m.invalid() == "" && int64(m.pageSize) == off {
			return m, nil
		}
		if off == defaultPageSize || !found1 {
			m1, found1 = m, true
		}
	}
	return meta{}, noValidMeta(m0, m1, found1)
}

// defaultPageSize is where page 1 is in a file made on this machine; when no
// page 1 is valid, that is the one described.
const defaultPageSize = 4096

// noValidMeta describes a file in which neither meta page is valid.
func noValidMeta(m0, m1 meta, found1 bool) damage {
	switch {
	case !found1:
		return damagef("its first header page %s and the file ends before the second (truncated)", m0.invalid())
	case m0.zero && m1.zero:
		return damage("both header pages are zeroed (zeroed or never written)")
	case m0.magic != boltMagic && m1.magic != boltMagic && !m0.zero && !m1.zero:
		return damage("it is not a bbolt database: neither header page is a bbolt header (overwritten, or another kind of file)")
	case m0.magic == boltMagic && m0.version != boltVersion:
		return damagef("its header says bbolt format version %d, and this nasreach reads version %d (written by newer software?)", m0.version, boltVersion)
	}
	return damagef("neither header page is valid: page 0 %s and page 1 %s (overwritten)", m0.invalid(), m1.invalid())
}

// pageHeader is the header every page starts with.
type pageHeader struct {
	id       uint64
	flags    uint16
	count    uint16
	overflow uint32
}

func readPageHeader(r io.ReaderAt, h header, id uint64) (pageHeader, error) {
	var b [pageHeaderSize]byte
	if _, err := r.ReadAt(b[:], int64(id*h.pageSize)); err != nil {
		return pageHeader{}, err
	}
	return pageHeader{
		id: byteOrder.Uint64(b[0:]), flags: byteOrder.Uint16(b[8:]), count: byteOrder.Uint16(b[10:]),
		overflow: byteOrder.Uint32(b[12:]),
	}, nil
}

// checkPage checks that page id, which the current meta page points at as
// what, is in use and has a header bbolt accepts with one of the flags.
func checkPage(r io.ReaderAt, h header, id uint64, what string, flags ...uint16) error {
	if id < 2 || id >= h.pages {
		return damagef("its header puts %s at page %d, outside pages 2 to %d (garbage header)", what, id, h.pages-1)
	}
	p, err := readPageHeader(r, h, id)
	if err != nil {
		return err
	}
	switch {
	case p.id != id:
		return damagef("page %d, %s, has a garbage header: it calls itself page %d", id, what, p.id)
	case !flagIn(p.flags, flags):
		return damagef("page %d, %s, has a garbage header: it says it is a %s page", id, what, pageKind(p.flags))
	case uint64(p.overflow) >= h.pages-id:
		return damagef("page %d, %s, has a garbage header: it runs %d pages past the last one", id, what, uint64(p.overflow)-(h.pages-id)+1)
	}
	return nil
}

func flagIn(f uint16, flags []uint16) bool {
	for _, want := range flags {
		if f == want {
			return true
		}
	}
	return false
}

// pageKind names the kind of page flags stands for.
func pageKind(flags uint16) string {
	switch flags {
	case flagBranch:
		return "branch"
	case flagLeaf:
		return "leaf"
	case flagMeta:
		return "meta"
	case flagFreelist:
		return "free list"
	}
	return fmt.Sprintf("unknown (flags %#x)", flags)
}

// checkFreelist checks the free list page: its header, that its count fits
// its pages, and that every page it lists is one bbolt may hand out. It
// returns how many pages it lists.
func checkFreelist(r io.ReaderAt, h header) (int, error) {
	const what = "the free list"
	if err := checkPage(r, h, h.freelist, what, flagFreelist); err != nil {
		return 0, err
	}
	p, err := readPageHeader(r, h, h.freelist)
	if err != nil {
		return 0, err
	}
	start := h.freelist*h.pageSize + pageHeaderSize
	room := ((uint64(p.overflow)+1)*h.pageSize - pageHeaderSize) / 8
	count := uint64(p.count)
	if count == 0xFFFF {
		var b [8]byte
		if _, err := r.ReadAt(b[:], int64(start)); err != nil {
			return 0, err
		}
		count, start, room = byteOrder.Uint64(b[:]), start+8, room-1
	}
	if count > room {
		return 0, damagef("page %d, %s, claims %d free pages but has room for %d (garbage)", h.freelist, what, count, room)
	}
	ids := make([]byte, count*8)
	if _, err := r.ReadAt(ids, int64(start)); err != nil {
		return 0, err
	}
	for i := range count {
		if id := byteOrder.Uint64(ids[i*8:]); id < 2 || id >= h.pages {
			return 0, damagef("page %d, %s, lists page %d, outside pages 2 to %d (garbage)", h.freelist, what, id, h.pages-1)
		}
	}
	return int(count), nil
}
