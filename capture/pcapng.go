package capture

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"time"
)

// The pcapng blocks and options a merge reads and writes (IETF draft-ietf-opsawg-pcapng). pcapgo's
// NgReader turns a stream into packets and drops what a merge must carry over unchanged (an
// interface's timestamp resolution, a packet's options, the statistics of every interface), so a
// merge reads the blocks themselves.
const (
	ngSectionHeader     = 0x0A0D0D0A
	ngInterface         = 1
	ngInterfaceStats    = 5
	ngEnhancedPacket    = 6
	ngByteOrderMagic    = 0x1A2B3C4D
	ngOptEnd            = 0
	ngOptComment        = 1
	ngOptIfName         = 2
	ngOptIfTSResol      = 9
	ngOptIfTSOffset     = 14
	ngDefaultTSResol    = 6 // microseconds, when an interface names none
	ngMaxBlock          = 1 << 20
	ngMinBlock          = 12 // type, length, trailing length
	ngSectionHeaderBody = 16 // byte-order magic, version, section length
)

// optKind is how an option's value depends on the byte order of its section: only the numbers are
// swapped when a big-endian section is written out little-endian.
type optKind int

const (
	optBytes optKind = iota + 1 // strings, addresses, hashes: written as they are
	optU8
	optU32
	optU64
	optTwoU32 // a timestamp: high and low 32 bits
)

// ngOptionKinds are the options a merge carries over, per block type. Others (custom options, and
// codes added after this list) are dropped: their byte order cannot be known.
var ngOptionKinds = map[uint32]map[uint16]optKind{
	ngInterface: {
		ngOptComment: optBytes, ngOptIfName: optBytes, 3: optBytes /* if_description */, 4: optBytes, /* if_IPv4addr */
		5: optBytes /* if_IPv6addr */, 6: optBytes /* if_MACaddr */, 7: optBytes /* if_EUIaddr */, 8: optU64, /* if_speed */
		ngOptIfTSResol: optU8, 10: optU32 /* if_tzone */, 11: optBytes /* if_filter */, 12: optBytes, /* if_os */
		13: optU8 /* if_fcslen */, ngOptIfTSOffset: optU64, 15: optBytes /* if_hardware */, 16: optU64, 17: optU64, /* if_txspeed, if_rxspeed */
	},
	ngEnhancedPacket: {
		ngOptComment: optBytes, 2: optU32 /* epb_flags */, 3: optBytes /* epb_hash */, 4: optU64, /* epb_dropcount */
		5: optU64 /* epb_packetid */, 6: optU32 /* epb_queue */, 7: optBytes, /* epb_verdict */
	},
	ngInterfaceStats: {
		ngOptComment: optBytes, 2: optTwoU32 /* isb_starttime */, 3: optTwoU32, /* isb_endtime */
		4: optU64 /* isb_ifrecv */, 5: optU64 /* isb_ifdrop */, 6: optU64 /* isb_filteraccept */, 7: optU64, /* isb_osdrop */
		8: optU64, /* isb_usrdeliv */
	},
}

var optSizes = map[optKind]int{optU8: 1, optU32: 4, optU64: 8, optTwoU32: 8}

// ngOption is one option, its value in little-endian order once read.
type ngOption struct {
	code  uint16
	value []byte
}

// ngBlockReader reads the blocks of a pcapng stream, in either byte order.
type ngBlockReader struct {
	r       *bufio.Reader
	order   binary.ByteOrder
	started bool
}

func newNgBlockReader(r io.Reader) *ngBlockReader {
	return &ngBlockReader{r: bufio.NewReader(r)}
}

// next returns the next block's type and body (what lies between its length and its trailing
// length), or io.EOF at the end of the stream between blocks.
func (br *ngBlockReader) next() (uint32, []byte, error) {
	var head [8]byte
	if n, err := io.ReadFull(br.r, head[:]); err != nil {
		if errors.Is(err, io.EOF) && n == 0 {
			return 0, nil, io.EOF
		}
		return 0, nil, fmt.Errorf("read a pcapng block: %w", io.ErrUnexpectedEOF)
	}
	// The section header's type reads the same in both byte orders; its byte-order magic, which
	// follows the length, says how to read the rest of the section.
	typ := binary.LittleEndian.Uint32(head[:4])
	switch {
	case typ == ngSectionHeader:
		magic, err := br.r.Peek(4)
		if err != nil {
			return 0, nil, fmt.Errorf("read a pcapng section header: %w", io.ErrUnexpectedEOF)
		}
		switch {
		case binary.LittleEndian.Uint32(magic) == ngByteOrderMagic:
			br.order = binary.LittleEndian
		case binary.BigEndian.Uint32(magic) == ngByteOrderMagic:
			br.order = binary.BigEndian
		default:
			return 0, nil, fmt.Errorf("pcapng section header with byte-order magic %#x", magic)
		}
		br.started = true
	case !br.started:
		return 0, nil, fmt.Errorf("not pcapng: the stream starts with block type %#x, not a section header", typ)
	default:
		typ = br.order.Uint32(head[:4])
	}
	length := br.order.Uint32(head[4:])
	if length < ngMinBlock || length%4 != 0 || length > ngMaxBlock {
		return 0, nil, fmt.Errorf("pcapng block of type %#x has length %d", typ, length)
	}
	rest := make([]byte, length-8)
	if _, err := io.ReadFull(br.r, rest); err != nil {
		return 0, nil, fmt.Errorf("read a pcapng block of type %#x: %w", typ, io.ErrUnexpectedEOF)
	}
	body := rest[:len(rest)-4]
	if trail := br.order.Uint32(rest[len(rest)-4:]); trail != length {
		return 0, nil, fmt.Errorf("pcapng block of type %#x: length %d, trailing length %d", typ, length, trail)
	}
	if typ == ngSectionHeader {
		if len(body) < ngSectionHeaderBody {
			return 0, nil, errors.New("pcapng section header too short")
		}
		if major := br.order.Uint16(body[4:]); major != 1 {
			return 0, nil, fmt.Errorf("pcapng version %d.x; this reads 1.x", major)
		}
	}
	return typ, body, nil
}

// options reads the options at the end of a block of type typ, keeping those ngOptionKinds lists
// for it, their numbers turned little-endian.
func (br *ngBlockReader) options(typ uint32, b []byte) ([]ngOption, error) {
	kinds := ngOptionKinds[typ]
	var out []ngOption
	for len(b) >= 4 {
		code, n := br.order.Uint16(b), int(br.order.Uint16(b[2:]))
		if code == ngOptEnd {
			break
		}
		padded := (n + 3) &^ 3
		if 4+padded > len(b) {
			return nil, fmt.Errorf("pcapng option %d of block type %#x: length %d past the block's end", code, typ, n)
		}
		v := b[4 : 4+n]
		b = b[4+padded:]
		kind, ok := kinds[code]
		if !ok {
			continue
		}
		if size, fixed := optSizes[kind]; fixed && n != size {
			return nil, fmt.Errorf("pcapng option %d of block type %#x: length %d, want %d", code, typ, n, size)
		}
		le := make([]byte, n)
		switch kind {
		case optBytes, optU8:
			copy(le, v)
		case optU32:
			binary.LittleEndian.PutUint32(le, br.order.Uint32(v))
		case optU64:
			binary.LittleEndian.PutUint64(le, br.order.Uint64(v))
		case optTwoU32:
			binary.LittleEndian.PutUint32(le, br.order.Uint32(v))
			binary.LittleEndian.PutUint32(le[4:], br.order.Uint32(v[4:]))
		}
		out = append(out, ngOption{code: code, value: le})
	}
	return out, nil
}

// tsClock turns an interface's timestamps into times: if_tsresol (a power of 10, or of 2 with the
// top bit set) and if_tsoffset (seconds added).
type tsClock struct {
	perSecond uint64
	offset    int64
}

func newTSClock(opts []ngOption) (tsClock, error) {
	c := tsClock{perSecond: 1_000_000}
	for _, o := range opts {
		switch o.code {
		case ngOptIfTSResol:
			res := o.value[0]
			switch {
			case res&0x80 != 0 && res&0x7f <= 63:
				c.perSecond = 1 << (res & 0x7f)
			case res&0x80 == 0 && res <= 19:
				c.perSecond = 1
				for range res {
					c.perSecond *= 10
				}
			default:
				return tsClock{}, fmt.Errorf("pcapng interface timestamp resolution %#x is finer than 64 bits hold", res)
			}
		case ngOptIfTSOffset:
			c.offset = int64(binary.LittleEndian.Uint64(o.value))
		}
	}
	return c, nil
}

// time is the instant of a timestamp of ts units.
func (c tsClock) time(ts uint64) time.Time {
	sec, frac := ts/c.perSecond, ts%c.perSecond
	hi, lo := bits.Mul64(frac, 1e9)
	nsec, _ := bits.Div64(hi, lo, c.perSecond) // frac < perSecond, so the quotient fits
	return time.Unix(int64(sec)+c.offset, int64(nsec))
}

// ngBlock builds a little-endian block of type typ: fixed, zero-padded to 4 bytes, then opts.
func ngBlock(typ uint32, fixed []byte, opts []ngOption) []byte {
	size := 12 + (len(fixed)+3)&^3
	if len(opts) > 0 {
		for _, o := range opts {
			size += 4 + (len(o.value)+3)&^3
		}
		size += 4 // opt_endofopt
	}
	b := make([]byte, 8, size)
	binary.LittleEndian.PutUint32(b, typ)
	binary.LittleEndian.PutUint32(b[4:], uint32(size))
	b = append(b, fixed...)
	b = append(b, make([]byte, (4-len(fixed)%4)%4)...)
	if len(opts) > 0 {
		for _, o := range opts {
			b = binary.LittleEndian.AppendUint16(b, o.code)
			b = binary.LittleEndian.AppendUint16(b, uint16(len(o.value)))
			b = append(b, o.value...)
			b = append(b, make([]byte, (4-len(o.value)%4)%4)...)
		}
		b = append(b, 0, 0, 0, 0)
	}
	return binary.LittleEndian.AppendUint32(b, uint32(size))
}
