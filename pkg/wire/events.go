package wire

import (
	"encoding/json"
	"io"
)

// Event is what the agent reports on a long-lived stream (KindSteal, KindMirror): one JSON object
// per line, the stream's only content in that direction.
type Event interface {
	StealEvent | MirrorEvent
}

// LineWriter sends events as JSON lines. Each Write is one whole line, so a reader that does not
// understand a line's fields still finds the next one. The bytes are encoding/json's, HTML escaping
// included: a plugin and an agent of one version must agree on them, and the events' tests pin them.
type LineWriter[E Event] struct{ enc *json.Encoder }

// NewLineWriter writes to w. It does not buffer: a caller that batches wraps w in a bufio.Writer.
func NewLineWriter[E Event](w io.Writer) *LineWriter[E] {
	return &LineWriter[E]{enc: json.NewEncoder(w)}
}

// Write sends one event.
func (w *LineWriter[E]) Write(ev E) error { return w.enc.Encode(ev) }

// LineReader reads what a LineWriter sent. Fields it does not know are ignored, so that a newer
// agent's events still read.
type LineReader[E Event] struct{ dec *json.Decoder }

// NewLineReader reads from r.
func NewLineReader[E Event](r io.Reader) *LineReader[E] {
	return &LineReader[E]{dec: json.NewDecoder(r)}
}

// Read returns the next event; io.EOF when the stream ended between events, io.ErrUnexpectedEOF
// when it ended inside one.
func (r *LineReader[E]) Read() (E, error) {
	var ev E
	if err := r.dec.Decode(&ev); err != nil {
		var zero E
		return zero, err
	}
	return ev, nil
}
