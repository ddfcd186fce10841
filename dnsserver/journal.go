package dnsserver

import (
	"sync"
	"time"

	"github.com/nasreach/nasreach/store"
)

// The journal is the zone's recent history for IXFR (RFC 1995): for each
// serial since the server started (at most DefaultJournalLen of them), the
// device that changed, what it resolved to before and after. It is fed by
// the store's change hook (Server.ZoneChanged) and holds no records of its
// own: an IXFR turns the deltas into A/AAAA records with deviceRecords, as
// AXFR does, so the two cannot disagree on what a device is in the zone.
//
// Changes arrive out of serial order when writers commit concurrently; one
// that comes early waits in pending for the serials before it. A gap that
// does not close (a change made before this server subscribed) within
// journalGapWait, or too many waiting, resets the history: IXFR from before
// then falls back to a full transfer, which is always correct.

// DefaultJournalLen is how many changes the journal keeps by default, about
// 130 bytes each (13 MB in all): a secondary that is behind by more gets
// the whole zone.
const DefaultJournalLen = 100_000

const (
	journalGapWait    = 2 * time.Second
	journalMaxPending = 4096
)

// delta is one change to the zone: the device name and what it resolved to
// before and after the change (ok false: the name did not exist).
type delta struct {
	serial      uint32 // the serial the change produced
	name        string
	before      store.Record
	after       store.Record
	had, has    bool
	arrivedTime time.Time // for pending entries only
}

// journal is a bounded ring of deltas in serial order.
type journal struct {
	mu      sync.Mutex
	max     int
	base    uint32  // the serial the oldest kept delta starts from
	ring    []delta // ring[(start+i)%max], i < n, in serial order
	start   int
	n       int
	pending map[uint32]delta
	// fresh is set after a reset: there is no usable history yet, and the
	// next change starts it (base becomes that change's serial).
	fresh bool
}

func newJournal(max int, serial uint32) *journal {
	return &journal{max: max, base: serial, pending: map[uint32]delta{}}
}

// nextSerial is the serial after s, as the store counts: 0 is skipped.
func nextSerial(s uint32) uint32 {
	if s+1 == 0 {
		return 1
	}
	return s + 1
}

// head is the serial the newest kept delta produced (base when none).
func (j *journal) head() uint32 {
	if j.n == 0 {
		return j.base
	}
	return j.ring[(j.start+j.n-1)%len(j.ring)].serial
}

// add records one change. It reports whether the journal's head moved.
func (j *journal) add(d delta, now time.Time) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.fresh {
		j.fresh, j.base, j.n = false, d.serial, 0
		return true
	}
	head := j.head()
	if !serialNewer(d.serial, head) {
		return false // made before the history starts
	}
	if d.serial != nextSerial(head) {
		d.arrivedTime = now
		j.pending[d.serial] = d
		j.closeGap(now)
		return j.head() != head
	}
	j.push(d)
	for {
		next, ok := j.pending[nextSerial(j.head())]
		if !ok {
			break
		}
		delete(j.pending, next.serial)
		j.push(next)
	}
	return true
}

// closeGap gives up on a gap that has stayed open too long: the history
// restarts at the newest serial waiting.
func (j *journal) closeGap(now time.Time) {
	var newest uint32
	stale := len(j.pending) > journalMaxPending
	for s, d := range j.pending {
		if now.Sub(d.arrivedTime) > journalGapWait {
			stale = true
		}
		if newest == 0 || serialNewer(s, newest) {
			newest = s
		}
	}
	if stale {
		j.base, j.n, j.start = newest, 0, 0
		clear(j.pending)
	}
}

func (j *journal) push(d delta) {
	d.arrivedTime = time.Time{}
	if j.ring == nil {
		j.ring = make([]delta, 0, min(j.max, 1024))
	}
	if j.n < j.max {
		if len(j.ring) < j.max && j.start == 0 && j.n == len(j.ring) {
			j.ring = append(j.ring, d) // still growing: no wrap yet
		} else {
			j.ring[(j.start+j.n)%len(j.ring)] = d
		}
		j.n++
		return
	}
	// Full: the oldest delta goes, and the history starts one later.
	j.base = j.ring[j.start].serial
	j.ring[j.start] = d
	j.start = (j.start + 1) % len(j.ring)
}

// reset forgets the history (the records' TTL changed, so no delta from
// before describes what a secondary holds): until the next change, and for
// serials before it, IXFR is a full transfer.
func (j *journal) reset() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.fresh, j.n, j.start = true, 0, 0
	clear(j.pending)
}

// span is a condensed difference between two serials: per device, what it
// resolved to at the first and at the last.
type span struct {
	from, to uint32
	devices  []deviceChange
}

type deviceChange struct {
	name          string
	before, after store.Record
	had, has      bool
}

// since returns the changes from serial from to the head, condensed per
// device (RFC 1995 §5 allows one difference sequence for several
// versions). ok is false when the journal does not reach back to from:
// then only a full transfer brings the client up to date. A client at the
// head gets an empty span.
func (j *journal) since(from uint32) (sp span, ok bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.fresh {
		return span{}, false
	}
	head := j.head()
	sp = span{from: from, to: head}
	if from == head {
		return sp, true
	}
	i := 0
	if from != j.base {
		for i = 0; i < j.n && j.ring[(j.start+i)%len(j.ring)].serial != from; i++ {
		}
		if i == j.n {
			return span{}, false
		}
		i++
	}
	index := map[string]int{}
	for ; i < j.n; i++ {
		d := j.ring[(j.start+i)%len(j.ring)]
		if k, seen := index[d.name]; seen {
			sp.devices[k].after, sp.devices[k].has = d.after, d.has
			continue
		}
		index[d.name] = len(sp.devices)
		sp.devices = append(sp.devices, deviceChange{name: d.name, before: d.before, had: d.had, after: d.after, has: d.has})
	}
	return sp, true
}

// serialNewer compares SOA serials with RFC 1982 arithmetic.
func serialNewer(a, b uint32) bool { return a != b && int32(a-b) > 0 }
