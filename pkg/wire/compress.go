package wire

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Compression names a per-stream codec. The names travel in open requests and replies.
type Compression string

// Codecs. CompressionNone is the empty string so that an omitted JSON field means "none".
const (
	CompressionNone Compression = ""
	CompressionS2   Compression = "s2"
	CompressionZstd Compression = "zstd"
)

func (c Compression) known() bool {
	return c == CompressionNone || c == CompressionS2 || c == CompressionZstd
}

func (c Compression) String() string {
	if c == CompressionNone {
		return "none"
	}
	return string(c)
}

// SupportedCompression lists the codecs this build speaks, best first for JSON-like payloads on a
// small CPU budget (see BenchmarkStreamThroughput).
func SupportedCompression() []Compression {
	return []Compression{CompressionS2, CompressionZstd}
}

// chooseCompression picks the first offered codec this build supports; the opener orders its offer.
func chooseCompression(offered []Compression) Compression {
	for _, c := range offered {
		if c == CompressionS2 || c == CompressionZstd {
			return c
		}
	}
	return CompressionNone
}

// Block framing inside a stream (after a CodeOK open reply), in each direction:
//
//	raw:        0x00 | len uint24 | len bytes
//	s2:         0x01 | encLen uint24 | rawLen uint24 | encLen bytes (s2 block)
//	zstd:       0x02 | encLen uint24 | rawLen uint24 | encLen bytes (one zstd frame)
//	end:        0xff | 0x000000
//
// "end" is the half-close: no more data in this direction. A yamux FIN that arrives without a prior
// end block means the peer closed the whole stream, the equivalent of a TCP reset. Every stream is
// framed this way, compressed or not, because yamux itself cannot tell a half-close from a close.
const (
	blockRaw  byte = 0x00
	blockS2   byte = 0x01
	blockZstd byte = 0x02
	blockEnd  byte = 0xff

	blockHeaderSize     = 4
	blockCompHeaderSize = 7

	// MaxBlockSize bounds the payload of one block before compression. 64 KiB keeps the buffers a
	// compressed stream holds small (there may be a thousand streams) while leaving s2 and zstd
	// enough context for JSON.
	MaxBlockSize = 64 << 10

	// minCompressSize: below this, compression headers cost more than they save and interactive
	// traffic should not pay the latency.
	minCompressSize = 512

	// A block that does not shrink by at least 1/8 is sent raw, and compression is skipped for the
	// next skip blocks; skip doubles up to maxSkipBlocks while payloads stay incompressible, so random
	// data costs one probe every 4 MiB instead of a full compression pass.
	maxSkipBlocks = 64
)

// codecs holds what a session's streams share: zstd state is large and its EncodeAll/DecodeAll are
// safe for concurrent use, and block buffers are pooled so that idle streams hold none.
type codecs struct {
	zstdOnce sync.Once
	zenc     *zstd.Encoder
	zdec     *zstd.Decoder
	zerr     error
	bufs     sync.Pool // *[]byte of cap maxEncodedBlock
	small    sync.Pool // *[]byte of cap smallBuf
}

// smallBuf is the buffer a small write is encoded in. Most writes on a mirror's copy or an HTTP
// exchange are a few hundred bytes; lending each a buffer sized for a 64 KiB block made the agent
// allocate ~76 KiB per write whenever a GC had emptied the pool, and at 5,000 copies a second
// that allocation, and the GC it drove, was a tenth of the agent's CPU (perf, redirect mode).
const smallBuf = 4 << 10

// encodedLen bounds the framed block for n bytes of data, in any codec.
func encodedLen(n int) int {
	return blockCompHeaderSize + max(s2.MaxEncodedLen(n), n+n/8+64)
}

func maxEncodedBlock() int {
	return encodedLen(MaxBlockSize)
}

func newCodecs() *codecs {
	c := &codecs{}
	c.bufs.New = func() any {
		b := make([]byte, maxEncodedBlock())
		return &b
	}
	c.small.New = func() any {
		b := make([]byte, smallBuf)
		return &b
	}
	return c
}

// getBuf lends a buffer of cap maxEncodedBlock.
func (c *codecs) getBuf() *[]byte { return c.bufs.Get().(*[]byte) }

// getBufFor lends a buffer that holds n bytes of data encoded, small when that is enough.
func (c *codecs) getBufFor(n int) *[]byte {
	if encodedLen(n) <= smallBuf {
		return c.small.Get().(*[]byte)
	}
	return c.bufs.Get().(*[]byte)
}

func (c *codecs) putBuf(b *[]byte) {
	if cap(*b) == smallBuf {
		c.small.Put(b)
		return
	}
	c.bufs.Put(b)
}

func (c *codecs) zstd() (*zstd.Encoder, *zstd.Decoder, error) {
	c.zstdOnce.Do(func() {
		n := min(runtime.GOMAXPROCS(0), 4)
		c.zenc, c.zerr = zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(n),
			zstd.WithWindowSize(MaxBlockSize),
			zstd.WithEncoderCRC(false),
			zstd.WithLowerEncoderMem(false))
		if c.zerr != nil {
			c.zerr = fmt.Errorf("zstd encoder: %w", c.zerr)
			return
		}
		c.zdec, c.zerr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(n),
			zstd.WithDecoderMaxMemory(MaxBlockSize),
			zstd.WithDecoderMaxWindow(1<<20),
			zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderLowmem(true))
		if c.zerr != nil {
			c.zerr = fmt.Errorf("zstd decoder: %w", c.zerr)
		}
	})
	return c.zenc, c.zdec, c.zerr
}

// close releases zstd goroutines and memory; streams must not be used afterwards.
func (c *codecs) close() {
	if c.zenc != nil {
		_ = c.zenc.Close()
	}
	if c.zdec != nil {
		c.zdec.Close()
	}
}

// encodeBlock writes one framed block for src into dst (cap >= encodedLen(len(src))) and returns it.
// It falls back to a raw block when the codec does not save at least 1/8.
func (c *codecs) encodeBlock(dst []byte, codec Compression, src []byte) ([]byte, bool, error) {
	if codec != CompressionNone && len(src) >= minCompressSize {
		var enc []byte
		var typ byte
		switch codec {
		case CompressionS2:
			typ = blockS2
			enc = s2.Encode(dst[blockCompHeaderSize:cap(dst)], src)
		case CompressionZstd:
			zenc, _, err := c.zstd()
			if err != nil {
				return nil, false, err
			}
			typ = blockZstd
			enc = zenc.EncodeAll(src, dst[blockCompHeaderSize:blockCompHeaderSize])
		}
		if len(enc) < len(src)-len(src)/8 && len(enc) <= cap(dst)-blockCompHeaderSize {
			out := dst[:blockCompHeaderSize+len(enc)]
			if &out[blockCompHeaderSize] != &enc[0] {
				copy(out[blockCompHeaderSize:], enc) // zstd grew past dst's capacity
			}
			out[0] = typ
			putUint24(out[1:], len(enc))
			putUint24(out[4:], len(src))
			return out, true, nil
		}
	}
	out := dst[:blockHeaderSize+len(src)]
	out[0] = blockRaw
	putUint24(out[1:], len(src))
	copy(out[blockHeaderSize:], src)
	return out, false, nil
}

// decodeBlock decodes a compressed block payload into dst (cap >= MaxBlockSize) and checks its size.
func (c *codecs) decodeBlock(dst []byte, typ byte, enc []byte, rawLen int) ([]byte, error) {
	var out []byte
	var err error
	switch typ {
	case blockS2:
		n, lerr := s2.DecodedLen(enc)
		if lerr != nil || n != rawLen {
			return nil, fmt.Errorf("s2 block claims %d bytes, header %d: %w", n, rawLen, ErrMalformed)
		}
		out, err = s2.Decode(dst[:cap(dst)], enc)
	case blockZstd:
		_, zdec, zerr := c.zstd()
		if zerr != nil {
			return nil, zerr
		}
		out, err = zdec.DecodeAll(enc, dst[:0:rawLen])
	default:
		return nil, fmt.Errorf("block type 0x%02x: %w", typ, ErrMalformed)
	}
	if err != nil {
		return nil, fmt.Errorf("decode block: %w: %w", ErrMalformed, err)
	}
	if len(out) != rawLen {
		return nil, fmt.Errorf("block decoded to %d bytes, header says %d: %w", len(out), rawLen, ErrMalformed)
	}
	return out, nil
}

func putUint24(b []byte, v int) {
	b[0], b[1], b[2] = byte(v>>16), byte(v>>8), byte(v)
}

func uint24(b []byte) int {
	return int(b[0])<<16 | int(b[1])<<8 | int(b[2])
}
