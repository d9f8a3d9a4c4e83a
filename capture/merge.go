package capture

import (
	"bufio"
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"
)

// DefaultMergeWindow is how long a Merger holds a record for a quieter stream to show an earlier
// one. The agents flush their captures every 100 ms; a second covers that and a slow tunnel.
const DefaultMergeWindow = time.Second

// mergeMaxPending bounds the bytes a Merger holds: past it the earliest records are written whatever
// the window says, so that a burst on one pod cannot grow the plugin without limit.
const mergeMaxPending = 64 << 20

// ErrMergerClosed is what Add returns for a stream still being read when the Merger was closed.
var ErrMergerClosed = errors.New("the pcapng merger is closed")

// Merger writes several live pcapng streams, one per pod, as one pcapng stream: one section, one
// interface per interface of each pod, named POD/IFNAME (POD/eth0, POD/lo) and otherwise as the pod's
// agent described it (link type, snap length, timestamp resolution and offset), each packet and
// statistics block pointed at its new interface.
//
// Records are written in timestamp order within a bounded window: a record is held until every
// other live stream has shown a record at least as late, or until it has waited Window (a pod with
// no traffic must not hold the others back), or until the held records pass 64 MiB. A record that
// arrives later than that is written when it arrives, out of order, which pcapng allows. The
// timestamps are each node's clock: pods on different nodes are ordered only as well as those
// clocks agree.
//
// Streams may be added while others run (a pod that joins mid-capture gets its interfaces appended,
// as pcapng allows) and may end at any time. Name resolution, simple packet and custom blocks are
// dropped: the agents write none, and a simple packet has no timestamp to merge by.
type Merger struct {
	// Window is how long a record waits for the other streams; set it before the first Add.
	Window time.Duration

	mu      sync.Mutex
	out     *bufio.Writer
	err     error // the first write error; every later write is skipped
	started bool  // the section header is written
	closed  bool
	nextIfc uint32
	live    map[*mergeStream]struct{}
	pending mergeQueue
	held    int // bytes in pending
	seq     uint64

	now      func() time.Time
	stopTick chan struct{}
	tickOnce sync.Once
}

// NewMerger returns a Merger writing to w. Call Close when every stream has ended: it writes what
// is still held.
func NewMerger(w io.Writer) *Merger {
	return &Merger{
		Window:   DefaultMergeWindow,
		out:      bufio.NewWriter(w),
		live:     map[*mergeStream]struct{}{},
		now:      time.Now,
		stopTick: make(chan struct{}),
	}
}

// mergeStream is one pod's stream as the Merger sees it.
type mergeStream struct {
	newest time.Time // the latest timestamp it has shown
	shown  bool
}

type mergeRecord struct {
	at      time.Time // the capture's time, for the order
	arrived time.Time // when it was read here, for the window
	seq     uint64    // ties keep the order of arrival
	block   []byte
	from    *mergeStream
}

// Add reads the pcapng stream r of pod until it ends, writing its interfaces and records into the
// merged stream; it returns nil at the end of r and the first error otherwise. Call it once per pod,
// each in its own goroutine. A stream cut in the middle of a block ends with an error; what was
// read before stays in the output.
func (m *Merger) Add(pod string, r io.Reader) error {
	s := &mergeStream{}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrMergerClosed
	}
	m.live[s] = struct{}{}
	m.mu.Unlock()
	m.tickOnce.Do(func() { go m.ticker() })
	defer func() {
		m.mu.Lock()
		delete(m.live, s)
		m.release(false)
		m.mu.Unlock()
	}()

	br := newNgBlockReader(r)
	// ids maps the interface ids of the stream's current section to the merged stream's, and
	// clocks turns their timestamps into times.
	var ids []uint32
	var clocks []tsClock
	for {
		typ, body, err := br.next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("pod %q: %w", pod, err)
		}
		switch typ {
		case ngSectionHeader:
			// A new section has new interfaces: they are appended, as for a new pod.
			ids, clocks = ids[:0], clocks[:0]
		case ngInterface:
			block, clock, err := m.rewriteInterface(br, pod, len(ids), body)
			if err != nil {
				return fmt.Errorf("pod %q: %w", pod, err)
			}
			id, err := m.writeInterface(block)
			if err != nil {
				return err
			}
			ids, clocks = append(ids, id), append(clocks, clock)
		case ngEnhancedPacket, ngInterfaceStats:
			rec, err := rewriteRecord(br, typ, body, ids, clocks)
			if err != nil {
				return fmt.Errorf("pod %q: %w", pod, err)
			}
			rec.from = s
			if err := m.hold(rec); err != nil {
				return err
			}
		}
	}
}

// rewriteInterface turns a stream's interface block number n into the merged one: named POD/NAME.
func (m *Merger) rewriteInterface(br *ngBlockReader, pod string, n int, body []byte) ([]byte, tsClock, error) {
	if len(body) < 8 {
		return nil, tsClock{}, errors.New("pcapng interface block too short")
	}
	opts, err := br.options(ngInterface, body[8:])
	if err != nil {
		return nil, tsClock{}, err
	}
	clock, err := newTSClock(opts)
	if err != nil {
		return nil, tsClock{}, err
	}
	name := fmt.Sprintf("if%d", n)
	kept := opts[:0]
	for _, o := range opts {
		if o.code == ngOptIfName {
			name = string(o.value)
			continue
		}
		kept = append(kept, o)
	}
	full := []byte(pod + "/" + name)
	if len(full) > 0xffff {
		full = full[:0xffff]
	}
	opts = append([]ngOption{{code: ngOptIfName, value: full}}, kept...)
	fixed := make([]byte, 8)
	binary.LittleEndian.PutUint16(fixed, br.order.Uint16(body))         // link type
	binary.LittleEndian.PutUint32(fixed[4:], br.order.Uint32(body[4:])) // snap length
	return ngBlock(ngInterface, fixed, opts), clock, nil
}

// rewriteRecord turns a stream's packet or statistics block into the merged one, pointed at the
// merged interface id.
func rewriteRecord(br *ngBlockReader, typ uint32, body []byte, ids []uint32, clocks []tsClock) (*mergeRecord, error) {
	fixedLen := 12 // interface id, timestamp
	if typ == ngEnhancedPacket {
		fixedLen = 20 // and the captured and original lengths
	}
	if len(body) < fixedLen {
		return nil, fmt.Errorf("pcapng block of type %#x too short", typ)
	}
	ifc := br.order.Uint32(body)
	if int64(ifc) >= int64(len(ids)) {
		return nil, fmt.Errorf("pcapng block of type %#x names interface %d of %d", typ, ifc, len(ids))
	}
	ts := uint64(br.order.Uint32(body[4:]))<<32 | uint64(br.order.Uint32(body[8:]))
	fixed := make([]byte, fixedLen, fixedLen+len(body))
	binary.LittleEndian.PutUint32(fixed, ids[ifc])
	binary.LittleEndian.PutUint32(fixed[4:], uint32(ts>>32))
	binary.LittleEndian.PutUint32(fixed[8:], uint32(ts))
	rest := body[fixedLen:]
	if typ == ngEnhancedPacket {
		captured, original := br.order.Uint32(body[12:]), br.order.Uint32(body[16:])
		binary.LittleEndian.PutUint32(fixed[12:], captured)
		binary.LittleEndian.PutUint32(fixed[16:], original)
		padded := (uint64(captured) + 3) &^ 3
		if padded > uint64(len(rest)) {
			return nil, fmt.Errorf("pcapng packet of %d bytes in a block of %d", captured, len(body))
		}
		fixed = append(fixed, rest[:captured]...)
		rest = rest[padded:]
	}
	opts, err := br.options(typ, rest)
	if err != nil {
		return nil, err
	}
	return &mergeRecord{at: clocks[ifc].time(ts), block: ngBlock(typ, fixed, opts)}, nil
}

// writeInterface appends an interface block to the merged stream and returns its id. Interfaces are
// written as soon as they are read: a packet may only follow its interface.
func (m *Merger) writeInterface(block []byte) (uint32, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrMergerClosed
	}
	m.write(block)
	id := m.nextIfc
	m.nextIfc++
	return id, m.flush()
}

// hold queues a record and writes every record that is then due.
func (m *Merger) hold(rec *mergeRecord) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrMergerClosed
	}
	rec.arrived = m.now()
	rec.seq = m.seq
	m.seq++
	if !rec.from.shown || rec.at.After(rec.from.newest) {
		rec.from.newest, rec.from.shown = rec.at, true
	}
	heap.Push(&m.pending, rec)
	m.held += len(rec.block)
	m.release(false)
	return m.err
}

// release writes the held records that are due, earliest first: every record no later than what each
// other live stream has shown, every record no later than one that has waited Window (so that the
// output stays in order), and the earliest while more than mergeMaxPending bytes are held. With all,
// everything is due. Called with mu held.
func (m *Merger) release(all bool) {
	var expired time.Time // the latest capture time among records past the window
	hasExpired := false
	if !all && m.pending.Len() > 0 {
		cutoff := m.now().Add(-m.Window)
		for _, r := range m.pending {
			if !r.arrived.After(cutoff) && (!hasExpired || r.at.After(expired)) {
				expired, hasExpired = r.at, true
			}
		}
	}
	wrote := false
	for m.pending.Len() > 0 {
		r := m.pending[0]
		due := all || (hasExpired && !r.at.After(expired)) || m.held > mergeMaxPending || m.shownByOthers(r)
		if !due {
			break
		}
		heap.Pop(&m.pending)
		m.held -= len(r.block)
		m.write(r.block)
		wrote = true
	}
	if wrote {
		_ = m.flush()
	}
}

// shownByOthers says whether every live stream other than r's has shown a record at least as late
// as r: none of them can still send an earlier one, unless its node's clock is behind.
func (m *Merger) shownByOthers(r *mergeRecord) bool {
	for s := range m.live {
		if s != r.from && (!s.shown || s.newest.Before(r.at)) {
			return false
		}
	}
	return true
}

// ticker writes the records whose window has passed when no new record comes to do it.
func (m *Merger) ticker() {
	t := time.NewTicker(max(m.Window/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-m.stopTick:
			return
		case <-t.C:
			m.mu.Lock()
			m.release(false)
			m.mu.Unlock()
		}
	}
}

// write appends block to the output, after the section header. Called with mu held.
func (m *Merger) write(block []byte) {
	if m.err != nil {
		return
	}
	if !m.started {
		m.started = true
		m.write(sectionHeader())
	}
	if _, err := m.out.Write(block); err != nil {
		m.err = fmt.Errorf("write the merged capture: %w", err)
	}
}

func (m *Merger) flush() error {
	if m.err == nil {
		if err := m.out.Flush(); err != nil {
			m.err = fmt.Errorf("write the merged capture: %w", err)
		}
	}
	return m.err
}

// Close writes every record still held, in order, and the section header if nothing else was
// written, so that the output is a valid pcapng file even with no pod. Streams still being read get
// ErrMergerClosed. It returns the first write error.
func (m *Merger) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return m.err
	}
	m.closed = true
	close(m.stopTick)
	m.release(true)
	if !m.started {
		m.write(nil)
	}
	return m.flush()
}

// sectionHeader is the merged stream's one section header: little-endian, version 1.0, length
// unknown (it is written live), and this program named as the application.
func sectionHeader() []byte {
	fixed := make([]byte, ngSectionHeaderBody)
	binary.LittleEndian.PutUint32(fixed, ngByteOrderMagic)
	binary.LittleEndian.PutUint16(fixed[4:], 1)
	binary.LittleEndian.PutUint64(fixed[8:], ^uint64(0))
	return ngBlock(ngSectionHeader, fixed, []ngOption{
		{code: 2, value: []byte(runtime.GOARCH)}, // shb_hardware
		{code: 3, value: []byte(runtime.GOOS)},   // shb_os
		{code: 4, value: []byte("trafficlab")},   // shb_userappl
	})
}

// mergeQueue is a min-heap of records by capture time, then arrival.
type mergeQueue []*mergeRecord

func (q mergeQueue) Len() int { return len(q) }
func (q mergeQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q mergeQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *mergeQueue) Push(x any)   { *q = append(*q, x.(*mergeRecord)) }
func (q *mergeQueue) Pop() any {
	old := *q
	r := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return r
}
