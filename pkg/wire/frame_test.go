package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fixedSecret is 0x00..0x1f, so golden bytes are stable.
func fixedSecret() Secret {
	var s Secret
	for i := range s {
		s[i] = byte(i)
	}
	return s
}

func TestMessageRoundTrip(t *testing.T) {
	tests := []Message{
		Hello{Protocol: Protocol, Version: "v1.2.3", Secret: fixedSecret(), Options: SessionOptions{HeartbeatInterval: 1000, HeartbeatDeadline: 5000}, DataConns: 2},
		// Another protocol's Hello keeps only the frozen fields.
		Hello{Protocol: 99, Version: "v99"},
		Hello{Protocol: Protocol, Version: "v1.2.3", Secret: fixedSecret(), Options: SessionOptions{ReconnectGrace: 60000}, DataConns: 1, Resume: &Resume{SessionID: "a1b2", Token: fixedSecret()}},
		Welcome{Protocol: Protocol, Version: "v1.2.3", SessionID: "a1b2", DataPort: 40000, DataKeyPin: fixedPin(), AgentPID: 1, Kinds: []string{KindDial}, Compression: SupportedCompression()},
		Welcome{Protocol: Protocol, Version: "v1.2.3", SessionID: "a1b2", DataPort: 40000, DataKeyPin: fixedPin(), ResumeToken: ptr(fixedSecret()), ReconnectGrace: 60000},
		OpenRequest{Kind: KindSteal, Steal: &StealSpec{Ports: []int{8080}}, Resume: true},
		Welcome{Protocol: Protocol + 1, Version: "v9"},
		Heartbeat{Seq: 1<<64 - 1},
		Heartbeat{},
		Error{Code: CodeProtocolMismatch, Message: "x", Protocol: 2, Version: "v2"},
		Error{Code: CodeInternal, Message: "nft: \"table\" busy\n"},
		Bye{Reason: "interrupted"},
		Bye{},
		OpenRequest{Kind: KindDial, Network: NetworkTCP, Address: "db.default.svc:5432", Compression: []Compression{CompressionS2, CompressionZstd}},
		OpenRequest{Kind: KindDial, Network: NetworkUDP, Address: "[fd00::1]:53"},
		OpenRequest{Kind: "exec", Address: "ignored for unknown kinds"},
		OpenRequest{Kind: KindMirror, Mirror: &MirrorSpec{Ports: []int{8080}}},
		OpenRequest{Kind: KindDump, Dump: &DumpSpec{Ports: []int{80}, Filter: "tcp", SnapLen: 96}},
		OpenRequest{Kind: KindSteal, Steal: &StealSpec{Ports: []int{80, 8080}, Filter: &HTTPFilter{Headers: []string{"^X-Dev: a"}, Match: MatchAny}, DetectTimeout: 500}},
		OpenRequest{Kind: KindIncoming, Network: NetworkTCP, Address: "10.0.0.1:80", Port: 80, Peer: "10.0.0.2:4000"},
		OpenReply{Code: CodeOK, Compression: CompressionZstd},
		OpenReply{Code: CodeRefused, Message: "dial tcp 10.0.0.1:80: connect: connection refused"},
	}
	for _, m := range tests {
		t.Run(fmt.Sprintf("%v", m.FrameType()), func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteMessage(&buf, m); err != nil {
				t.Fatal(err)
			}
			got, err := ReadMessage(&buf)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(m, got); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
			if buf.Len() != 0 {
				t.Errorf("%d bytes left after one frame", buf.Len())
			}
		})
	}
}

// TestGolden pins the bytes of every frame type. If this fails, the wire format changed: bump
// Protocol and update docs/protocol.md, or undo the change.
func TestGolden(t *testing.T) {
	frame := func(m Message) []byte {
		b, err := AppendFrame(nil, m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	hdr := func(typ byte, body string) string {
		return fmt.Sprintf("%02x%08x", typ, len(body)) + hex.EncodeToString([]byte(body))
	}
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"hello", frame(Hello{Protocol: 2, Version: "v1.0.0", Secret: fixedSecret(), Options: SessionOptions{HeartbeatInterval: 1000, HeartbeatDeadline: 5000}, DataConns: 2}),
			hdr(0x01, `{"protocol":2,"version":"v1.0.0","secret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","options":{"heartbeatIntervalMs":1000,"heartbeatDeadlineMs":5000},"dataConns":2}`)},
		{"welcome", frame(Welcome{Protocol: 2, Version: "v1.0.0", SessionID: "s1", DataPort: 40000, DataKeyPin: fixedPin(), AgentPID: 12, Kinds: []string{"dial"}, Compression: []Compression{"s2", "zstd"}}),
			hdr(0x02, `{"protocol":2,"version":"v1.0.0","sessionId":"s1","dataPort":40000,"dataKeyPin":"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=","agentPid":12,"kinds":["dial"],"compression":["s2","zstd"]}`)},
		{"heartbeat", frame(Heartbeat{Seq: 3}), hdr(0x03, `{"seq":3}`)},
		{"error", frame(Error{Code: CodeProtocolMismatch, Message: "m", Protocol: 1, Version: "v1.0.0"}),
			hdr(0x04, `{"code":8,"message":"m","protocol":1,"version":"v1.0.0"}`)},
		{"bye", frame(Bye{Reason: "done"}), hdr(0x05, `{"reason":"done"}`)},
		{"open", frame(OpenRequest{Kind: "dial", Network: "tcp", Address: "localhost:8080", Compression: []Compression{"s2"}}),
			hdr(0x10, `{"kind":"dial","network":"tcp","address":"localhost:8080","compression":["s2"]}`)},
		{"open reply ok", frame(OpenReply{Code: CodeOK, Compression: CompressionS2}), hdr(0x11, `{"code":0,"compression":"s2"}`)},
		{"open reply error", frame(OpenReply{Code: CodeRefused, Message: "refused"}), hdr(0x11, `{"code":1,"message":"refused"}`)},
		// The fixed parts, spelled out so the test does not merely repeat the encoder.
		{"heartbeat literal", frame(Heartbeat{Seq: 3}), "03" + "00000009" + "7b22736571223a337d"},
		{"preamble", AppendPreamble(nil, 2), "544c4401" + "0002"},
		{"preamble ack ok", AppendPreambleAck(nil, CodeOK), "544c4101" + "0002" + "00"},
		{"preamble ack forbidden", AppendPreambleAck(nil, CodeForbidden), "544c4101" + "0002" + "04"},
		{"control magic", []byte(ControlMagic), "544c4301"},
		{"datagram", mustDatagram(t, []byte("dns?")), "0004" + "646e733f"},
		{"empty datagram", mustDatagram(t, nil), "0000"},
		{"raw block", blockBytes(t, CompressionNone, []byte("hello")), "00000005" + "68656c6c6f"},
		{"small block stays raw", blockBytes(t, CompressionS2, []byte("hello")), "00000005" + "68656c6c6f"},
		{"s2 block header", blockBytes(t, CompressionS2, bytes.Repeat([]byte("a"), 1024))[:7], "01" + "00000a" + "000400"},
		{"end block", endBlock(t), "ff000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hex.EncodeToString(tt.got); got != tt.want {
				t.Errorf("bytes changed:\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func mustDatagram(t *testing.T, p []byte) []byte {
	b, err := AppendDatagram(nil, p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func blockBytes(t *testing.T, c Compression, p []byte) []byte {
	var out bytes.Buffer
	st, err := Wrap(nopCloser{&out}, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(p); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func endBlock(t *testing.T) []byte {
	var out bytes.Buffer
	st, _ := Wrap(nopCloser{&out}, CompressionNone)
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func rawFrame(typ byte, body string) []byte {
	return append([]byte{typ, byte(len(body) >> 24), byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
}

type nopCloser struct{ io.ReadWriter }

func (nopCloser) Close() error { return nil }

func TestReadFrameErrors(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, io.EOF},
		{"short header", []byte{1, 0, 0}, io.ErrUnexpectedEOF},
		{"short body", []byte{3, 0, 0, 0, 9, '{'}, io.ErrUnexpectedEOF},
		{"too large", []byte{1, 0, 1, 0, 1}, ErrFrameTooLarge},
		{"unknown type", []byte{0x7f, 0, 0, 0, 2, '{', '}'}, ErrMalformed},
		{"not an object", []byte{3, 0, 0, 0, 4, 'n', 'u', 'l', 'l'}, ErrMalformed},
		{"bad json", []byte{3, 0, 0, 0, 1, '{'}, ErrMalformed},
		{"hello without secret", rawFrame(1, `{"protocol":2,"dataConns":1}`), ErrMalformed},
		{"short secret", rawFrame(1, `{"protocol":2,"secret":"AAEC","dataConns":1}`), ErrMalformed},
		{"hello without data connections", rawFrame(1, `{"protocol":2,"secret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}`), ErrMalformed},
		{"hello with too many data connections", rawFrame(1, `{"protocol":2,"secret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","dataConns":17}`), ErrMalformed},
		{"resume without token", rawFrame(1, `{"protocol":2,"secret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","dataConns":1,"resume":{"sessionId":"a1b2"}}`), ErrMalformed},
		{"resume without session id", rawFrame(1, `{"protocol":2,"secret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","dataConns":1,"resume":{"token":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}}`), ErrMalformed},
		{"negative reconnect grace", rawFrame(1, `{"protocol":2,"secret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","dataConns":1,"options":{"reconnectGraceMs":-1}}`), ErrMalformed},
		{"welcome without port", rawFrame(2, `{"protocol":2,"dataKeyPin":"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="}`), ErrMalformed},
		{"welcome without key pin", rawFrame(2, `{"protocol":2,"dataPort":40000}`), ErrMalformed},
		{"welcome with a short key pin", rawFrame(2, `{"protocol":2,"dataPort":40000,"dataKeyPin":"AAEC"}`), ErrMalformed},
		{"error with ok code", rawFrame(4, `{"code":0}`), ErrMalformed},
		{"open without kind", rawFrame(0x10, `{}`), ErrBadRequest},
		{"open bad port", rawFrame(0x10, `{"kind":"dial","network":"tcp","address":"h:99999"}`), ErrBadRequest},
		{"open bad network", rawFrame(0x10, `{"kind":"dial","network":"ip","address":"h:1"}`), ErrUnsupported},
		{"reply unknown codec", rawFrame(0x11, `{"code":0,"compression":"lz4"}`), ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadMessage(bytes.NewReader(tt.in))
			if !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// fixedPin is 0x20..0x3f, so golden bytes are stable.
func fixedPin() KeyPin {
	var p KeyPin
	for i := range p {
		p[i] = byte(0x20 + i)
	}
	return p
}

func TestPreambleBadMagic(t *testing.T) {
	_, err := ReadPreamble(strings.NewReader(strings.Repeat("GET / HTTP/1.1\r\n", 3)))
	if !errors.Is(err, ErrBadMagic) || !strings.Contains(err.Error(), `"GET "`) {
		t.Errorf("got %v", err)
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	h := Hello{Protocol: Protocol, Secret: fixedSecret(), Resume: &Resume{SessionID: "a1b2", Token: fixedSecret()}}
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(f, h)
		if strings.Contains(out, "AAEC") || strings.Contains(out, "[0 1 2") || strings.Contains(out, "0x0, 0x1") {
			t.Errorf("%s of a Hello shows the secret: %s", f, out)
		}
	}
}

func TestCodeFor(t *testing.T) {
	tests := []struct {
		err  error
		want Code
	}{
		{nil, CodeOK},
		{&RemoteError{Code: CodeUnreachable}, CodeUnreachable},
		{fmt.Errorf("wrapped: %w", ErrBadSecret), CodeForbidden},
		{errors.New("?"), CodeInternal},
	}
	for _, tt := range tests {
		if got := CodeFor(tt.err); got != tt.want {
			t.Errorf("CodeFor(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestDatagrams(t *testing.T) {
	var buf bytes.Buffer
	d := NewDatagramConn(&buf)
	in := [][]byte{[]byte("a"), {}, bytes.Repeat([]byte{7}, MaxDatagramSize), []byte("after the big one")}
	for _, p := range in {
		if err := d.WriteDatagram(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.WriteDatagram(make([]byte, MaxDatagramSize+1)); !errors.Is(err, ErrDatagramTooLarge) {
		t.Errorf("oversized write: %v", err)
	}
	rbuf := make([]byte, MaxDatagramSize)
	var got [][]byte
	for {
		n, err := d.ReadDatagram(rbuf)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, append([]byte{}, rbuf[:n]...))
	}
	if diff := cmp.Diff(in, got); diff != "" {
		t.Errorf("datagrams (-want +got):\n%s", diff)
	}
	// A datagram larger than the buffer is skipped whole, so the next one still lines up.
	buf.Reset()
	_ = d.WriteDatagram([]byte("too long"))
	_ = d.WriteDatagram([]byte("ok"))
	small := make([]byte, 4)
	if _, err := d.ReadDatagram(small); !errors.Is(err, ErrDatagramTooLarge) {
		t.Errorf("short buffer: %v", err)
	}
	if n, err := d.ReadDatagram(small); err != nil || string(small[:n]) != "ok" {
		t.Errorf("next datagram: %q, %v", small[:n], err)
	}
}

func ptr[T any](v T) *T { return &v }
