package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func seedFrames(f *testing.F) {
	for _, m := range []Message{
		Hello{Protocol: Protocol, Version: "v1", Secret: fixedSecret(), Options: SessionOptions{HeartbeatInterval: 1000, HeartbeatDeadline: 5000, User: "alice@example.com", Host: "laptop"}, DataConns: 2},
		Hello{Protocol: Protocol, Version: "v1", Secret: fixedSecret(), Options: SessionOptions{ReconnectGrace: 60000}, DataConns: 1, Resume: &Resume{SessionID: "s", Token: fixedSecret()}},
		Welcome{Protocol: Protocol, Version: "v1", SessionID: "s", DataPort: 1234, DataKeyPin: fixedPin(), AgentPID: 1, Kinds: []string{KindDial}, Compression: SupportedCompression()},
		Heartbeat{Seq: 9},
		Error{Code: CodeProtocolMismatch, Message: "m", Protocol: Protocol + 1},
		Bye{Reason: "r"},
		OpenRequest{Kind: KindDial, Network: NetworkUDP, Address: "[::1]:53", Compression: []Compression{CompressionZstd}},
		OpenRequest{Kind: KindDump, Dump: &DumpSpec{Ports: []int{8080}, Mesh: &Mesh{Name: MeshIstio, Mode: MeshSidecar, ProxyUID: IstioProxyUID}}},
		OpenReply{Code: CodeOK, Compression: CompressionS2},
		OpenReply{Code: CodeUnknownHost, Message: "no such host"},
	} {
		b, err := AppendFrame(nil, m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0x01, 0xff, 0xff, 0xff, 0xff})
	f.Add(rawFrame(0x10, `{"kind":"dial","network":"tcp","address":"h:1","compression":["s2","lz4",""]}`))
	f.Add(rawFrame(0x02, `{"protocol":2,"dataPort":-1}`))
}

// FuzzReadFrame: any input either decodes to a message that re-encodes to an equal message, or
// fails with an error; it never panics, and never reads more than one frame.
func FuzzReadFrame(f *testing.F) {
	seedFrames(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		fr, err := ReadFrame(r)
		if err != nil {
			return
		}
		if consumed := len(in) - r.Len(); consumed != frameHeaderSize+len(fr.Body) {
			t.Fatalf("consumed %d bytes for a %d-byte body", consumed, len(fr.Body))
		}
		m, err := fr.Decode()
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatalf("re-encode %#v: %v", m, err)
		}
		m2, err := ReadMessage(&buf)
		if err != nil {
			t.Fatalf("decode of re-encoded %#v: %v", m, err)
		}
		b1, _ := AppendFrame(nil, m)
		b2, _ := AppendFrame(nil, m2)
		if !bytes.Equal(b1, b2) {
			t.Fatalf("not stable:\n%q\n%q", b1, b2)
		}
	})
}

// FuzzReadOpen drives the open handshake decoder as the accepting side does: a request must be
// valid after decoding, or the error must map to a code we can send back.
func FuzzReadOpen(f *testing.F) {
	seedFrames(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := ReadMessage(bytes.NewReader(in))
		if err != nil {
			if CodeFor(err) == CodeOK {
				t.Fatalf("error %v maps to CodeOK", err)
			}
			return
		}
		switch m := m.(type) {
		case OpenRequest:
			if err := m.Validate(); err != nil {
				t.Fatalf("decoded request %#v fails Validate: %v", m, err)
			}
		case OpenReply:
			if m.Code == CodeOK && !m.Compression.known() {
				t.Fatalf("accepted unknown codec %q", m.Compression)
			}
		}
	})
}

// FuzzReadPreamble covers the clear halves of the data-connection handshake.
func FuzzReadPreamble(f *testing.F) {
	f.Add(AppendPreamble(nil, Protocol))
	f.Add(AppendPreambleAck(nil, CodeForbidden))
	f.Add([]byte("TLD\x01\x00"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		proto, err := ReadPreamble(bytes.NewReader(in))
		if err == nil {
			if len(in) < PreambleSize || string(in[:4]) != PreambleMagic {
				t.Fatalf("accepted %q", in)
			}
			if proto != int(in[4])<<8|int(in[5]) {
				t.Fatalf("protocol %d from %x", proto, in[4:6])
			}
		}
		if _, code, err := ReadPreambleAck(bytes.NewReader(in)); err == nil && code >= codeMax {
			t.Fatalf("code %d escaped the known range", code)
		}
	})
}

// FuzzStreamRead feeds arbitrary bytes to a stream's block decoder: it must end in io.EOF (after an
// end block) or an error, never panic, and never return more than a block's worth per decode.
func FuzzStreamRead(f *testing.F) {
	for _, c := range []Compression{CompressionNone, CompressionS2, CompressionZstd} {
		var buf bytes.Buffer
		st, _ := Wrap(nopCloser{&buf}, c)
		_, _ = st.Write(jsonBytes(1, 600))
		_, _ = st.Write([]byte("tail"))
		_ = st.CloseWrite()
		f.Add(buf.Bytes())
	}
	f.Add([]byte{0x01, 0, 0, 2, 0, 0, 1, 0, 0})
	f.Add([]byte{0xff, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		st, _ := Wrap(nopCloser{bytes.NewBuffer(in)}, CompressionNone)
		defer func() {
			st.Close()
			st.bg.Wait() // coverage from a stray goroutine would make every input look flaky
		}()
		total := 0
		buf := make([]byte, 4096)
		for {
			n, err := st.Read(buf)
			total += n
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrStreamAborted) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				break
			}
			if n == 0 {
				t.Fatal("Read returned 0, nil")
			}
		}
		// Compressed blocks cannot expand beyond MaxBlockSize each, and each costs at least 8 bytes.
		if total > (len(in)/8+1)*MaxBlockSize {
			t.Fatalf("%d input bytes decoded to %d", len(in), total)
		}
	})
}

// FuzzStreamRoundTrip: whatever is written through a codec, with whatever write sizes, reads back
// unchanged.
func FuzzStreamRoundTrip(f *testing.F) {
	f.Add(jsonBytes(1, 300), uint8(1), uint16(700))
	f.Add(randomBytes(1, 300), uint8(2), uint16(1))
	f.Add([]byte{}, uint8(0), uint16(0))
	f.Fuzz(func(t *testing.T, p []byte, codec uint8, chunk uint16) {
		c := []Compression{CompressionNone, CompressionS2, CompressionZstd}[int(codec)%3]
		var wire bytes.Buffer
		w, _ := Wrap(nopCloser{&wire}, c)
		defer w.Close()
		// Repeat the input so that blocks fill up and compression kicks in.
		src := bytes.Repeat(p, 1+MaxBlockSize/(len(p)+1)/8)
		step := int(chunk)%(len(src)+1) + 1
		for rest := src; len(rest) > 0; rest = rest[min(step, len(rest)):] {
			if _, err := w.Write(rest[:min(step, len(rest))]); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		r, _ := Wrap(nopCloser{&wire}, CompressionNone)
		defer func() {
			r.Close()
			r.bg.Wait()
		}()
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, src) {
			t.Fatalf("codec %v: got %d bytes (%v), want %d", c, len(got), err, len(src))
		}
	})
}

// FuzzReadDatagram: a datagram stream never yields more than its length prefix allows.
func FuzzReadDatagram(f *testing.F) {
	f.Add([]byte{0, 3, 'a', 'b', 'c', 0, 0})
	f.Add([]byte{0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		buf := make([]byte, 512)
		for {
			n, err := ReadDatagram(r, buf)
			if err != nil {
				if errors.Is(err, ErrDatagramTooLarge) {
					continue
				}
				return
			}
			if n > len(buf) {
				t.Fatalf("datagram of %d bytes in a %d-byte buffer", n, len(buf))
			}
		}
	})
}
