package capture

import (
	"bufio"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// Format is a capture file format.
type Format int

// The formats a Writer can produce.
const (
	// PCAP is the classic libpcap format with microsecond timestamps, which every tool
	// reads.
	PCAP Format = iota + 1
	// PCAPNG records which interface each packet came from, which matters when capturing on
	// all interfaces.
	PCAPNG
)

func (f Format) String() string {
	switch f {
	case PCAP:
		return "pcap"
	case PCAPNG:
		return "pcapng"
	default:
		return fmt.Sprintf("format(%d)", int(f))
	}
}

// ParseFormat turns "pcap" or "pcapng" into a Format.
func ParseFormat(s string) (Format, error) {
	switch s {
	case "pcap":
		return PCAP, nil
	case "pcapng":
		return PCAPNG, nil
	default:
		return 0, fmt.Errorf("unknown capture format %q: want pcap or pcapng", s)
	}
}

// Writer writes Ethernet frames to a capture file. It buffers; call Flush to push the
// buffered bytes to the underlying writer.
type Writer struct {
	buf  *bufio.Writer
	pcap *pcapgo.Writer
	ng   *pcapgo.NgWriter
	// ngIDs maps kernel interface indexes to pcapng interface ids.
	ngIDs map[int]int
}

// NewWriter writes the file header for format to w. ifcs are the interfaces the packets come
// from (Capture.Interfaces); pcapng names them, and a packet from another interface gets an
// unnamed entry when it first appears. snapLen is recorded in the header.
func NewWriter(w io.Writer, format Format, snapLen int, ifcs []Interface) (*Writer, error) {
	if snapLen <= 0 {
		return nil, fmt.Errorf("snap length %d must be positive", snapLen)
	}
	// Both pcapgo writers emit each packet as several small writes.
	buf := bufio.NewWriter(w)
	out := &Writer{buf: buf}
	switch format {
	case PCAP:
		out.pcap = pcapgo.NewWriter(buf)
		if err := out.pcap.WriteFileHeader(uint32(snapLen), layers.LinkTypeEthernet); err != nil {
			return nil, fmt.Errorf("write pcap header: %w", err)
		}
	case PCAPNG:
		if err := out.newNg(snapLen, ifcs); err != nil {
			return nil, fmt.Errorf("write pcapng header: %w", err)
		}
	default:
		return nil, fmt.Errorf("unknown capture format %d", int(format))
	}
	return out, nil
}

func (w *Writer) newNg(snapLen int, ifcs []Interface) error {
	idb := func(ifc Interface) pcapgo.NgInterface {
		return pcapgo.NgInterface{
			Name:                ifc.Name,
			OS:                  runtime.GOOS,
			LinkType:            layers.LinkTypeEthernet,
			SnapLength:          uint32(snapLen),
			TimestampResolution: 9, // the only resolution NgWriter writes
		}
	}
	// pcapgo.DefaultNgWriterOptions names gopacket as the writing application.
	opts := pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{
		Hardware:    runtime.GOARCH,
		OS:          runtime.GOOS,
		Application: "trafficlab",
	}}
	// The writer starts with one interface block, so the first interface goes there.
	first := Interface{Index: -1}
	if len(ifcs) > 0 {
		first = ifcs[0]
	}
	ng, err := pcapgo.NewNgWriterInterface(w.buf, idb(first), opts)
	if err != nil {
		return err
	}
	w.ng = ng
	w.ngIDs = map[int]int{first.Index: 0}
	for _, ifc := range ifcs[min(1, len(ifcs)):] {
		if err := w.addNgInterface(ifc, idb(ifc)); err != nil {
			return err
		}
	}
	return nil
}

func (w *Writer) addNgInterface(ifc Interface, idb pcapgo.NgInterface) error {
	if _, ok := w.ngIDs[ifc.Index]; ok {
		return nil
	}
	id, err := w.ng.AddInterface(idb)
	if err != nil {
		return err
	}
	w.ngIDs[ifc.Index] = id
	return nil
}

// WritePacket appends one frame. ci.InterfaceIndex is the kernel's interface index, as a
// Capture reports it.
func (w *Writer) WritePacket(ci gopacket.CaptureInfo, data []byte) error {
	if w.pcap != nil {
		return w.pcap.WritePacket(ci, data)
	}
	id, ok := w.ngIDs[ci.InterfaceIndex]
	if !ok {
		ifc := Interface{Index: ci.InterfaceIndex}
		err := w.addNgInterface(ifc, pcapgo.NgInterface{
			Name:                fmt.Sprintf("ifindex%d", ci.InterfaceIndex),
			LinkType:            layers.LinkTypeEthernet,
			TimestampResolution: 9,
		})
		if err != nil {
			return err
		}
		id = w.ngIDs[ci.InterfaceIndex]
	}
	ci.InterfaceIndex = id
	return w.ng.WritePacket(ci, data)
}

// Flush writes out everything buffered.
func (w *Writer) Flush() error {
	if w.ng != nil {
		if err := w.ng.Flush(); err != nil {
			return err
		}
	}
	return w.buf.Flush()
}

// WriteStats records the capture's kernel counts in a pcapng interface statistics block on the
// first interface (the counts are summed over every socket), so that a reader of the file, tshark
// or the plugin, learns how many packets the kernel dropped. A pcap file has no place for them.
func (w *Writer) WriteStats(s Stats, at time.Time) error {
	if w.ng == nil {
		return nil
	}
	return w.ng.WriteInterfaceStats(0, pcapgo.NgInterfaceStatistics{
		LastUpdate:      at,
		PacketsReceived: s.Received,
		PacketsDropped:  s.Dropped,
	})
}
