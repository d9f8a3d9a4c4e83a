package capture

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

type record struct {
	CI   gopacket.CaptureInfo
	Data []byte
}

// readAll drains a PacketSource, as any consumer of a capture file would.
func readAll(t testing.TB, src PacketSource) []record {
	t.Helper()
	var out []record
	for {
		data, ci, err := src.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("ReadPacketData: %v", err)
		}
		out = append(out, record{CI: ci, Data: data})
	}
}

func testRecords(t testing.TB) []record {
	base := time.Date(2026, 11, 23, 1, 2, 3, 4000, time.UTC) // whole microseconds: pcap keeps no more
	full := frame(t, v4(layers.IPProtocolTCP), tcp(40000, 8080), []byte("GET / HTTP/1.1\r\n\r\n"))
	return []record{
		{CI: gopacket.CaptureInfo{Timestamp: base, CaptureLength: len(full), Length: len(full), InterfaceIndex: 7}, Data: full},
		// Cut to a snap length: Length keeps the original size.
		{CI: gopacket.CaptureInfo{Timestamp: base.Add(time.Millisecond), CaptureLength: 40, Length: len(full), InterfaceIndex: 1}, Data: full[:40]},
		// From an interface the writer was not told about.
		{CI: gopacket.CaptureInfo{Timestamp: base.Add(time.Second), CaptureLength: 3, Length: 3, InterfaceIndex: 42}, Data: []byte{1, 2, 3}},
	}
}

var testInterfaces = []Interface{{Index: 7, Name: "eth0"}, {Index: 1, Name: "lo"}}

func writeAll(t testing.TB, format Format, snapLen int, recs []record) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, format, snapLen, testInterfaces)
	if err != nil {
		t.Fatalf("NewWriter(%v): %v", format, err)
	}
	for _, r := range recs {
		if err := w.WritePacket(r.CI, r.Data); err != nil {
			t.Fatalf("WritePacket: %v", err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	return buf.Bytes()
}

func TestWritePCAP(t *testing.T) {
	recs := testRecords(t)
	r, err := pcapgo.NewReader(bytes.NewReader(writeAll(t, PCAP, 1500, recs)))
	if err != nil {
		t.Fatalf("NewReader: %v", err)
	}
	if r.LinkType() != layers.LinkTypeEthernet || r.Snaplen() != 1500 {
		t.Errorf("header: link type %v, snaplen %d; want Ethernet, 1500", r.LinkType(), r.Snaplen())
	}
	// pcap has no interface ids.
	want := make([]record, len(recs))
	for i, rec := range recs {
		rec.CI.InterfaceIndex = 0
		want[i] = rec
	}
	if diff := cmp.Diff(want, readAll(t, r)); diff != "" {
		t.Errorf("read back (-want +got):\n%s", diff)
	}
}

func TestWritePCAPNG(t *testing.T) {
	recs := testRecords(t)
	r, err := pcapgo.NewNgReader(bytes.NewReader(writeAll(t, PCAPNG, 1500, recs)), pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatalf("NewNgReader: %v", err)
	}
	got := readAll(t, r)

	// Interface ids follow the order the writer learned of the interfaces.
	want := make([]record, len(recs))
	for i, rec := range recs {
		rec.CI.InterfaceIndex = []int{0, 1, 2}[i]
		want[i] = rec
	}
	// The reader reports interface statistics; only ids, lengths, times and data are ours.
	for i := range got {
		got[i].CI.AncillaryData = nil
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("read back (-want +got):\n%s", diff)
	}

	var names []string
	for i := range r.NInterfaces() {
		ifc, err := r.Interface(i)
		if err != nil {
			t.Fatal(err)
		}
		if ifc.LinkType != layers.LinkTypeEthernet {
			t.Errorf("interface %d link type %v, want Ethernet", i, ifc.LinkType)
		}
		names = append(names, ifc.Name)
	}
	if diff := cmp.Diff([]string{"eth0", "lo", "ifindex42"}, names); diff != "" {
		t.Errorf("interface names (-want +got):\n%s", diff)
	}
	if app := r.SectionInfo().Application; app != "trafficlab" {
		t.Errorf("section application %q, want %q", app, "trafficlab")
	}
}

func TestWriterRejects(t *testing.T) {
	if _, err := NewWriter(io.Discard, Format(9), 100, nil); err == nil {
		t.Error("NewWriter accepted an unknown format")
	}
	if _, err := NewWriter(io.Discard, PCAP, 0, nil); err == nil {
		t.Error("NewWriter accepted snap length 0")
	}
	for _, format := range []Format{PCAP, PCAPNG} {
		w, err := NewWriter(io.Discard, format, 100, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WritePacket(gopacket.CaptureInfo{CaptureLength: 5, Length: 5}, []byte{1}); err == nil {
			t.Errorf("%v: WritePacket accepted a capture length that does not match the data", format)
		}
	}
}

func TestParseFormat(t *testing.T) {
	for _, f := range []Format{PCAP, PCAPNG} {
		got, err := ParseFormat(f.String())
		if err != nil || got != f {
			t.Errorf("ParseFormat(%q) = %v, %v", f.String(), got, err)
		}
	}
	if _, err := ParseFormat("json"); err == nil {
		t.Error(`ParseFormat("json") succeeded`)
	}
}

// FuzzWriteRoundTrip writes arbitrary frames in both formats and checks that pcapgo's readers
// return them unchanged.
func FuzzWriteRoundTrip(f *testing.F) {
	f.Add([]byte("frame"), uint16(10), int64(1_700_000_000_123_456), uint8(3))
	f.Add([]byte{}, uint16(0), int64(0), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, extra uint16, micros int64, ifindex uint8) {
		if len(data) > 65535 {
			data = data[:65535]
		}
		// pcap stores unsigned 32-bit seconds and no zero time (the writer substitutes now).
		micros = 1 + (micros&(1<<52-1))%(1<<32*1_000_000-1)
		rec := record{
			CI: gopacket.CaptureInfo{
				Timestamp:      time.UnixMicro(micros).UTC(),
				CaptureLength:  len(data),
				Length:         len(data) + int(extra),
				InterfaceIndex: int(ifindex),
			},
			Data: data,
		}
		ifcs := []Interface{{Index: 3, Name: "eth0"}}
		for _, format := range []Format{PCAP, PCAPNG} {
			var buf bytes.Buffer
			w, err := NewWriter(&buf, format, 65535, ifcs)
			if err != nil {
				t.Fatal(err)
			}
			if err := w.WritePacket(rec.CI, rec.Data); err != nil {
				t.Fatalf("%v: WritePacket: %v", format, err)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			var src PacketSource
			if format == PCAP {
				src, err = pcapgo.NewReader(&buf)
			} else {
				src, err = pcapgo.NewNgReader(&buf, pcapgo.DefaultNgReaderOptions)
			}
			if err != nil {
				t.Fatalf("%v: open reader: %v", format, err)
			}
			got := readAll(t, src)
			if len(got) != 1 {
				t.Fatalf("%v: read %d packets, want 1", format, len(got))
			}
			g := got[0]
			if !bytes.Equal(g.Data, rec.Data) || g.CI.Length != rec.CI.Length || !g.CI.Timestamp.Equal(rec.CI.Timestamp) {
				t.Errorf("%v: read back %+v % x, wrote %+v % x", format, g.CI, g.Data, rec.CI, rec.Data)
			}
		}
	})
}
