package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
)

// Protocol is the wire protocol number this build speaks. Peers refuse any other number; see
// docs/protocol.md for what bumps it.
const Protocol = 2

// MaxFrameSize bounds a frame body. Control and open messages are a few hundred bytes; the bound
// keeps a garbled or hostile peer from making us allocate.
const MaxFrameSize = 64 << 10

// frameHeaderSize is the type byte plus the 32-bit big-endian body length.
const frameHeaderSize = 5

// ControlMagic starts each direction of the control channel. It never changes, so that a future
// protocol can still be told apart from garbage (for instance a shell error on the exec stream).
const ControlMagic = "TLC\x01"

// FrameType identifies a frame's message. Values are part of the wire format.
type FrameType uint8

// Frame types. 0x01-0x0f belong to the control channel, 0x10-0x1f to the stream open handshake.
const (
	FrameHello     FrameType = 0x01
	FrameWelcome   FrameType = 0x02
	FrameHeartbeat FrameType = 0x03
	FrameError     FrameType = 0x04
	FrameBye       FrameType = 0x05
	FrameOpen      FrameType = 0x10
	FrameOpenReply FrameType = 0x11
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "hello"
	case FrameWelcome:
		return "welcome"
	case FrameHeartbeat:
		return "heartbeat"
	case FrameError:
		return "error"
	case FrameBye:
		return "bye"
	case FrameOpen:
		return "open"
	case FrameOpenReply:
		return "open reply"
	}
	return fmt.Sprintf("frame 0x%02x", uint8(t))
}

// Message is any body that travels in a frame.
type Message interface {
	FrameType() FrameType
}

// Frame is one undecoded frame.
type Frame struct {
	Type FrameType
	Body []byte
}

// AppendFrame appends m's frame to dst. One buffer per frame means one Write per frame, which keeps
// frames whole when several goroutines share a writer under a lock and costs a single syscall.
func AppendFrame(dst []byte, m Message) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return dst, fmt.Errorf("encode %v: %w", m.FrameType(), err)
	}
	if len(body) > MaxFrameSize {
		return dst, fmt.Errorf("encode %v: %d bytes: %w", m.FrameType(), len(body), ErrFrameTooLarge)
	}
	dst = append(dst, byte(m.FrameType()))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...), nil
}

// WriteMessage writes m as one frame with a single Write.
func WriteMessage(w io.Writer, m Message) error {
	buf, err := AppendFrame(make([]byte, 0, frameHeaderSize+256), m)
	if err != nil {
		return err
	}
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write %v: %w", m.FrameType(), err)
	}
	return nil
}

// ReadFrame reads exactly one frame and nothing more, so the reader can hand the rest of the stream
// to someone else (the open handshake is followed by stream data). A clean EOF before the first
// header byte is returned as io.EOF; a frame cut short is io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader) (Frame, error) {
	var hdr [frameHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFrameSize {
		return Frame{}, fmt.Errorf("%v of %d bytes (max %d): %w", FrameType(hdr[0]), n, MaxFrameSize, ErrFrameTooLarge)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, fmt.Errorf("read %v body: %w", FrameType(hdr[0]), err)
	}
	return Frame{Type: FrameType(hdr[0]), Body: body}, nil
}

// Decode parses the frame body into its message type and validates it.
func (f Frame) Decode() (Message, error) {
	var m interface {
		Message
		validate() error
	}
	switch f.Type {
	case FrameHello:
		m = new(Hello)
	case FrameWelcome:
		m = new(Welcome)
	case FrameHeartbeat:
		m = new(Heartbeat)
	case FrameError:
		m = new(Error)
	case FrameBye:
		m = new(Bye)
	case FrameOpen:
		m = new(OpenRequest)
	case FrameOpenReply:
		m = new(OpenReply)
	default:
		return nil, fmt.Errorf("%v: %w", f.Type, ErrMalformed)
	}
	// A body must be one JSON object; json.Unmarshal alone would accept "null".
	trimmed := bytes.TrimSpace(f.Body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fmt.Errorf("%v body is not a JSON object: %w", f.Type, ErrMalformed)
	}
	// A Hello or Welcome from another protocol is decoded only as far as the frozen fields, so the
	// handshake can explain the mismatch even if the rest of the message changed shape.
	if f.Type == FrameHello || f.Type == FrameWelcome {
		var head struct {
			Protocol int    `json:"protocol"`
			Version  string `json:"version"`
		}
		if err := json.Unmarshal(f.Body, &head); err != nil {
			return nil, fmt.Errorf("%v body: %w: %w", f.Type, ErrMalformed, err)
		}
		if head.Protocol != Protocol {
			if f.Type == FrameHello {
				return Hello{Protocol: head.Protocol, Version: head.Version}, nil
			}
			return Welcome{Protocol: head.Protocol, Version: head.Version}, nil
		}
	}
	if err := json.Unmarshal(f.Body, m); err != nil {
		return nil, fmt.Errorf("%v body: %w: %w", f.Type, ErrMalformed, err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%v: %w", f.Type, err)
	}
	// Return values, not pointers, so that callers switch on one form.
	switch v := m.(type) {
	case *Hello:
		return *v, nil
	case *Welcome:
		return *v, nil
	case *Heartbeat:
		return *v, nil
	case *Error:
		return *v, nil
	case *Bye:
		return *v, nil
	case *OpenRequest:
		return *v, nil
	case *OpenReply:
		return *v, nil
	}
	return nil, fmt.Errorf("%v: %w", f.Type, ErrMalformed)
}

// ReadMessage reads and decodes one frame.
func ReadMessage(r io.Reader) (Message, error) {
	f, err := ReadFrame(r)
	if err != nil {
		return nil, err
	}
	return f.Decode()
}
