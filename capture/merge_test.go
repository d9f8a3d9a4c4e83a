package capture

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// agentStream is what an agent sends for a dump: the capture writer's header and interfaces, then
// packets and the kernel's counts, as two byte slices so that a test can hold the second back.
func agentStream(t testing.TB, ifcs []Interface, recs []record, stats *Stats) (head, body []byte) {
	t.Helper()
	a := newAgentWriter(t, ifcs)
	head, body = a.more(t), a.more(t, recs...)
	if stats != nil {
		body = append(body, a.stats(t, *stats, recs[len(recs)-1].CI.Timestamp)...)
	}
	return head, body
}

// agentWriter writes an agent's stream in pieces.
type agentWriter struct {
	buf bytes.Buffer
	w   *Writer
}

func newAgentWriter(t testing.TB, ifcs []Interface) *agentWriter {
	t.Helper()
	a := &agentWriter{}
	var err error
	if a.w, err = NewWriter(&a.buf, PCAPNG, 65535, ifcs); err != nil {
		t.Fatal(err)
	}
	return a
}

// more returns what the writer wrote since the last call, recs added.
func (a *agentWriter) more(t testing.TB, recs ...record) []byte {
	t.Helper()
	for _, r := range recs {
		if err := a.w.WritePacket(r.CI, r.Data); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.w.Flush(); err != nil {
		t.Fatal(err)
	}
	b := bytes.Clone(a.buf.Bytes())
	a.buf.Reset()
	return b
}

// stats returns the statistics block the agent writes at the end.
func (a *agentWriter) stats(t testing.TB, s Stats, at time.Time) []byte {
	t.Helper()
	if err := a.w.WriteStats(s, at); err != nil {
		t.Fatal(err)
	}
	return a.more(t)
}

func pkt(at time.Time, ifindex int, payload string) record {
	data := []byte(payload)
	return record{CI: gopacket.CaptureInfo{Timestamp: at, CaptureLength: len(data), Length: len(data) + 100, InterfaceIndex: ifindex}, Data: data}
}

// syncBuffer is a bytes.Buffer that a test may read while the merger writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

type merged struct {
	names   []string
	packets []record
	stats   map[int]pcapgo.NgInterfaceStatistics
}

// readMerged reads a merged stream back with pcapgo's reader, as Wireshark would.
func readMerged(t testing.TB, b []byte) merged {
	t.Helper()
	out := merged{stats: map[int]pcapgo.NgInterfaceStatistics{}}
	r, err := pcapgo.NewNgReader(bytes.NewReader(b), pcapgo.NgReaderOptions{
		StatisticsCallback: func(id int, s pcapgo.NgInterfaceStatistics) { out.stats[id] = s },
	})
	if err != nil {
		t.Fatalf("NewNgReader: %v", err)
	}
	out.packets = readAll(t, r)
	for i := range out.packets {
		out.packets[i].CI.AncillaryData = nil
	}
	for i := range r.NInterfaces() {
		ifc, err := r.Interface(i)
		if err != nil {
			t.Fatal(err)
		}
		out.names = append(out.names, ifc.Name)
	}
	return out
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// startPods runs Add for each stream over a pipe and returns the pipes' writing ends; each head is
// written before it returns, so that every pod is live before any record flows.
func startPods(t *testing.T, m *Merger, pods []string, heads [][]byte) ([]*io.PipeWriter, chan error) {
	t.Helper()
	errs := make(chan error, len(pods))
	var ws []*io.PipeWriter
	for i, pod := range pods {
		pr, pw := io.Pipe()
		ws = append(ws, pw)
		before := m.interfaces()
		go func() { errs <- m.Add(pod, pr) }()
		if _, err := pw.Write(heads[i]); err != nil {
			t.Fatal(err)
		}
		// The next pod starts once this one's interfaces are written, so that their ids follow the
		// order of pods (the merger numbers interfaces as it reads them, whichever stream comes first).
		waitFor(t, pod+"'s interfaces", func() bool { return m.interfaces() > before })
	}
	return ws, errs
}

// TestMergeTwoPods: two agents' streams, each with eth0 and lo, their packets interleaved in time and
// sent pod by pod, come out as one section with four interfaces named POD/IFNAME and the packets in
// timestamp order, each on its pod's interface, and each pod's kernel counts on its own interface.
func TestMergeTwoPods(t *testing.T) {
	base := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	ifcs := []Interface{{Index: 2, Name: "eth0"}, {Index: 1, Name: "lo"}}
	a := []record{pkt(base, 2, "a0"), pkt(base.Add(2*time.Millisecond), 1, "a2"), pkt(base.Add(4*time.Millisecond), 2, "a4")}
	b := []record{pkt(base.Add(time.Millisecond), 1, "b1"), pkt(base.Add(3*time.Millisecond), 2, "b3"), pkt(base.Add(5*time.Millisecond), 2, "b5")}
	headA, bodyA := agentStream(t, ifcs, a, &Stats{Received: 3, Dropped: 1})
	headB, bodyB := agentStream(t, ifcs, b, &Stats{Received: 30, Dropped: 7})

	var out syncBuffer
	m := NewMerger(&out)
	m.Window = time.Hour // only the other stream's progress releases a record here
	ws, errs := startPods(t, m, []string{"api-a", "api-b"}, [][]byte{headA, headB})
	// All of a first, then all of b: the merger must hold a's records until b has caught up.
	for i, body := range [][]byte{bodyA, bodyB} {
		if _, err := ws[i].Write(body); err != nil {
			t.Fatal(err)
		}
	}
	for _, w := range ws {
		_ = w.Close()
	}
	for range ws {
		if err := <-errs; err != nil {
			t.Errorf("Add: %v", err)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}

	got := readMerged(t, out.Bytes())
	if d := cmp.Diff([]string{"api-a/eth0", "api-a/lo", "api-b/eth0", "api-b/lo"}, got.names); d != "" {
		t.Errorf("interfaces (-want +got):\n%s", d)
	}
	ifcID := map[string]map[int]int{"a": {2: 0, 1: 1}, "b": {2: 2, 1: 3}}
	var want []record
	for i := range 6 {
		r := []record{a[0], b[0], a[1], b[1], a[2], b[2]}[i]
		r.CI.InterfaceIndex = ifcID[string(r.Data[0])][r.CI.InterfaceIndex]
		want = append(want, r)
	}
	if d := cmp.Diff(want, got.packets); d != "" {
		t.Errorf("packets (-want +got):\n%s", d)
	}
	// Each agent writes its counts on its first interface.
	if s := got.stats[0]; s.PacketsReceived != 3 || s.PacketsDropped != 1 {
		t.Errorf("api-a's counts: %+v", s)
	}
	if s := got.stats[2]; s.PacketsReceived != 30 || s.PacketsDropped != 7 {
		t.Errorf("api-b's counts: %+v", s)
	}
}

// fakeClock is a clock the test moves.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time           { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) add(d time.Duration)      { c.ns.Add(int64(d)) }
func (m *Merger) heldRecords() int            { m.mu.Lock(); defer m.mu.Unlock(); return m.pending.Len() }
func (m *Merger) interfaces() uint32          { m.mu.Lock(); defer m.mu.Unlock(); return m.nextIfc }
func countPackets(t testing.TB, b []byte) int { return len(readMerged(t, b).packets) }

// TestMergeWindow: a pod with no traffic holds the others' records only for the window; a pod that
// leaves releases what waited for it; a pod that joins later gets its interfaces appended.
func TestMergeWindow(t *testing.T) {
	base := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	ifcs := []Interface{{Index: 2, Name: "eth0"}}
	busy := newAgentWriter(t, ifcs)
	headA, bodyA := busy.more(t), busy.more(t, pkt(base, 2, "a0"))
	headQ, _ := agentStream(t, ifcs, nil, nil)

	var out syncBuffer
	clock := &fakeClock{}
	m := NewMerger(&out)
	m.now = clock.now
	m.Window = 10 * time.Millisecond
	ws, errs := startPods(t, m, []string{"busy", "quiet"}, [][]byte{headA, headQ})
	if _, err := ws[0].Write(bodyA); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the record to be held", func() bool { return m.heldRecords() == 1 })
	if n := countPackets(t, out.Bytes()); n != 0 {
		t.Fatalf("%d packets written while the quiet pod could still send an earlier one", n)
	}
	clock.add(10 * time.Millisecond)
	waitFor(t, "the window to release the record", func() bool { return m.heldRecords() == 0 })
	if n := countPackets(t, out.Bytes()); n != 1 {
		t.Fatalf("%d packets after the window, want 1", n)
	}

	// Another record of busy waits again; quiet leaving releases it without the window.
	if _, err := ws[0].Write(busy.more(t, pkt(base.Add(time.Second), 2, "a1"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second record to be held", func() bool { return m.heldRecords() == 1 })
	_ = ws[1].Close()
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "quiet's end to release the record", func() bool { return m.heldRecords() == 0 })

	// A pod joining now gets the next interface id.
	headJ, bodyJ := agentStream(t, []Interface{{Index: 5, Name: "eth0"}, {Index: 1, Name: "lo"}}, []record{pkt(base.Add(2*time.Second), 1, "j2")}, nil)
	if err := m.Add("joined", bytes.NewReader(append(headJ, bodyJ...))); err != nil {
		t.Fatal(err)
	}
	_ = ws[0].Close()
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	got := readMerged(t, out.Bytes())
	if d := cmp.Diff([]string{"busy/eth0", "quiet/eth0", "joined/eth0", "joined/lo"}, got.names); d != "" {
		t.Errorf("interfaces (-want +got):\n%s", d)
	}
	var payloads []string
	for _, p := range got.packets {
		payloads = append(payloads, fmt.Sprintf("%d:%s", p.CI.InterfaceIndex, p.Data))
	}
	if d := cmp.Diff([]string{"0:a0", "0:a1", "3:j2"}, payloads); d != "" {
		t.Errorf("packets (-want +got):\n%s", d)
	}
}

// ngTestBlock builds one block in byte order o, the way another program's writer might.
func ngTestBlock(o binary.AppendByteOrder, typ uint32, fixed []byte, opts ...[]byte) []byte {
	body := append([]byte{}, fixed...)
	body = append(body, make([]byte, (4-len(body)%4)%4)...)
	for _, opt := range opts {
		body = append(body, opt...)
	}
	if len(opts) > 0 {
		body = append(body, 0, 0, 0, 0)
	}
	b := o.AppendUint32(nil, typ)
	b = o.AppendUint32(b, uint32(len(body)+12))
	b = append(b, body...)
	return o.AppendUint32(b, uint32(len(body)+12))
}

func ngTestOption(o binary.AppendByteOrder, code uint16, value []byte) []byte {
	b := o.AppendUint16(nil, code)
	b = o.AppendUint16(b, uint16(len(value)))
	b = append(b, value...)
	return append(b, make([]byte, (4-len(value)%4)%4)...)
}

// foreignStream is a big- or little-endian stream of one interface with microsecond timestamps and a
// one-hour if_tsoffset, one packet with a flags option, and a statistics block.
func foreignStream(o interface {
	binary.AppendByteOrder
	String() string
}, at time.Time, payload []byte) []byte {
	shb := ngTestBlock(o, ngSectionHeader, o.AppendUint64(o.AppendUint16(o.AppendUint16(o.AppendUint32(nil, ngByteOrderMagic), 1), 0), ^uint64(0)))
	idb := ngTestBlock(o, ngInterface, o.AppendUint32(o.AppendUint16(o.AppendUint16(nil, uint16(layers.LinkTypeLinuxSLL)), 0), 1500),
		ngTestOption(o, ngOptIfName, []byte("eth0")),
		ngTestOption(o, ngOptIfTSResol, []byte{6}),
		ngTestOption(o, ngOptIfTSOffset, o.AppendUint64(nil, 3600)),
		ngTestOption(o, 2989, []byte("custom, dropped")))
	us := uint64(at.Add(-time.Hour).UnixMicro())
	epbFixed := o.AppendUint32(o.AppendUint32(o.AppendUint32(o.AppendUint32(o.AppendUint32(nil, 0), uint32(us>>32)), uint32(us)), uint32(len(payload))), uint32(len(payload)+4))
	epb := ngTestBlock(o, ngEnhancedPacket, append(epbFixed, payload...), ngTestOption(o, 2, o.AppendUint32(nil, 1))) // epb_flags: inbound
	isb := ngTestBlock(o, ngInterfaceStats, o.AppendUint32(o.AppendUint32(o.AppendUint32(nil, 0), uint32(us>>32)), uint32(us)),
		ngTestOption(o, 4, o.AppendUint64(nil, 10)), ngTestOption(o, 5, o.AppendUint64(nil, 2)))
	return bytes.Join([][]byte{shb, idb, epb, isb}, nil)
}

// TestMergeKeepsInterface: the merged interface keeps the source's link type, snap length, timestamp
// resolution and offset, and a big-endian stream's numbers come out right.
func TestMergeKeepsInterface(t *testing.T) {
	at := time.Date(2026, 12, 7, 18, 0, 0, 123456000, time.UTC)
	for _, o := range []interface {
		binary.AppendByteOrder
		String() string
	}{binary.BigEndian, binary.LittleEndian} {
		t.Run(o.String(), func(t *testing.T) {
			var out bytes.Buffer
			m := NewMerger(&out)
			if err := m.Add("web", bytes.NewReader(foreignStream(o, at, []byte("hello")))); err != nil {
				t.Fatal(err)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			var stats []pcapgo.NgInterfaceStatistics
			r, err := pcapgo.NewNgReader(bytes.NewReader(out.Bytes()), pcapgo.NgReaderOptions{
				StatisticsCallback: func(_ int, s pcapgo.NgInterfaceStatistics) { stats = append(stats, s) },
			})
			if err != nil {
				t.Fatal(err)
			}
			data, ci, opts, err := r.ReadPacketDataWithOptions()
			if err != nil {
				t.Fatal(err)
			}
			ifc, _ := r.Interface(0)
			if ifc.Name != "web/eth0" || ifc.LinkType != layers.LinkTypeLinuxSLL || ifc.SnapLength != 1500 || ifc.TimestampResolution != 6 || ifc.TimestampOffset != 3600 {
				t.Errorf("interface %+v", ifc)
			}
			if !ci.Timestamp.Equal(at) || string(data) != "hello" || ci.Length != 9 {
				t.Errorf("packet at %v %q length %d, want %v %q 9", ci.Timestamp, data, ci.Length, at, "hello")
			}
			if opts.Flags == nil || opts.Flags.Direction != pcapgo.NgEpbFlagDirectionInbound {
				t.Errorf("packet flags %+v, want inbound", opts.Flags)
			}
			if _, _, err := r.ReadPacketData(); !errors.Is(err, io.EOF) {
				t.Errorf("after the packet: %v", err)
			}
			if len(stats) != 1 || stats[0].PacketsReceived != 10 || stats[0].PacketsDropped != 2 {
				t.Errorf("statistics %+v, want one block: 10 received, 2 dropped", stats)
			}
		})
	}
}

// TestMergeRefuses: what is not a pcapng stream, or breaks one, ends that pod's stream with an error
// naming the pod, and what was read before stays in the output.
func TestMergeRefuses(t *testing.T) {
	at := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	good := foreignStream(binary.LittleEndian, at, []byte("hello"))
	for _, tt := range []struct {
		name, stream, want string
	}{
		{"not pcapng", "GET / HTTP/1.1\r\n\r\n", "not pcapng"},
		{"cut in a block", string(good[:len(good)-5]), "unexpected EOF"},
		{"unknown interface", string(good[:28]) + string(ngTestBlock(binary.LittleEndian, ngEnhancedPacket, make([]byte, 20))), "names interface 0 of 0"},
		{"bad trailing length", string(good[:len(good)-1]) + "\xff", "trailing length"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			m := NewMerger(&out)
			err := m.Add("web", strings.NewReader(tt.stream))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `pod "web"`) {
				t.Errorf("Add = %v, want an error naming pod \"web\" with %q", err, tt.want)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := pcapgo.NewNgReader(bytes.NewReader(out.Bytes()), pcapgo.NgReaderOptions{}); err != nil && !errors.Is(err, io.EOF) {
				t.Errorf("the output does not open: %v", err)
			}
		})
	}
}

// TestMergeTshark: Wireshark's reader opens the merged file and names each packet's interface.
func TestMergeTshark(t *testing.T) {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		t.Fatalf("tshark is needed (.ci/run installs it): %v", err)
	}
	base := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	var out bytes.Buffer
	m := NewMerger(&out)
	for i, pod := range []string{"api-7d9f-abcde", "api-7d9f-fghij"} {
		frame := frame(t, v4(layers.IPProtocolTCP), tcp(40000+uint16(i), 8080), []byte("GET /"+pod+" HTTP/1.1\r\n\r\n"))
		head, body := agentStream(t, []Interface{{Index: 2, Name: "eth0"}, {Index: 1, Name: "lo"}},
			[]record{{CI: gopacket.CaptureInfo{Timestamp: base, CaptureLength: len(frame), Length: len(frame), InterfaceIndex: 1}, Data: frame}}, &Stats{Received: 1})
		base = base.Add(time.Millisecond)
		if err := m.Add(pod, bytes.NewReader(append(head, body...))); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "merged.pcapng")
	if err := os.WriteFile(file, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := exec.Command(tshark, "-r", file, "-T", "fields", "-e", "frame.interface_name", "-e", "http.request.uri").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	want := "api-7d9f-abcde/lo\t/api-7d9f-abcde\napi-7d9f-fghij/lo\t/api-7d9f-fghij\n"
	if string(got) != want {
		t.Errorf("tshark read:\n%s\nwant:\n%s", got, want)
	}
}

// FuzzMerge feeds arbitrary bytes to a merger as one pod's stream: it must not panic, and whatever
// it wrote must be pcapng that pcapgo reads to the end, with as many packets as were merged.
func FuzzMerge(f *testing.F) {
	at := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	f.Add(foreignStream(binary.BigEndian, at, []byte("hello")))
	f.Add(foreignStream(binary.LittleEndian, at, []byte{}))
	head, body := agentStream(f, []Interface{{Index: 2, Name: "eth0"}}, []record{pkt(at, 2, "x"), pkt(at, 7, "y")}, &Stats{Received: 2})
	f.Add(append(head, body...))
	f.Fuzz(func(t *testing.T, stream []byte) {
		var out bytes.Buffer
		m := NewMerger(&out)
		_ = m.Add("pod", bytes.NewReader(stream))
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		r, err := pcapgo.NewNgReader(bytes.NewReader(out.Bytes()), pcapgo.NgReaderOptions{WantMixedLinkType: true})
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return // no interface in the stream: a section header alone
		}
		if err != nil {
			t.Fatalf("the output does not open: %v", err)
		}
		for {
			_, _, err := r.ReadPacketData()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("the output does not read to its end: %v", err)
			}
		}
	})
}

// BenchmarkMerge: one agent's stream of 1500-byte frames through a merger, as a one-pod dump -w runs
// it; bytes/s are the stream's.
func BenchmarkMerge(b *testing.B) {
	at := time.Date(2026, 12, 7, 18, 0, 0, 0, time.UTC)
	recs := make([]record, 1000)
	for i := range recs {
		recs[i] = pkt(at.Add(time.Duration(i)*time.Microsecond), 2, strings.Repeat("x", 1500))
	}
	head, body := agentStream(b, []Interface{{Index: 2, Name: "eth0"}}, recs, nil)
	stream := slices.Concat(head, body)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		m := NewMerger(io.Discard)
		if err := m.Add("pod", bytes.NewReader(stream)); err != nil {
			b.Fatal(err)
		}
		if err := m.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
