package httpx

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"
	"testing"
)

// Seeds shared by the fuzz targets; more are in testdata/fuzz/<target>/.
var fuzzSeeds = []string{
	"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
	"POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
	"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
	"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
	"GET / HTTP/1.0\nConnection: keep-alive\n\n",
	"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
	"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
	"HTTP/1.0 204\r\n\r\n",
}

func FuzzDetect(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, decided := Detect(data)
		// Once decided, every longer prefix gives the same answer: Peek may stop reading there.
		for i := range len(data) {
			pi, di := Detect(data[:i])
			if di && (!decided || pi != p) {
				t.Fatalf("Detect(%q) = %v, decided; Detect(%q) = %v, %v", data[:i], pi, data, p, decided)
			}
		}
		var pk Peeked
		pk.examine(data)
		if pk.Proto != p {
			t.Fatalf("examine proto %v, Detect %v", pk.Proto, p)
		}
		if pk.First != nil && p == ProtoHTTP1 && !bytes.HasPrefix(data, pk.First.Raw) {
			t.Fatalf("first head %q is not a prefix of %q", pk.First.Raw, data)
		}
	})
}

func FuzzParseRequestHead(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseRequestHead(data)
		if err != nil {
			if !errors.Is(err, ErrIncomplete) && !errors.Is(err, ErrHeadTooLarge) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if !bytes.HasPrefix(data, h.Raw) || !bytes.HasSuffix(h.Raw, []byte("\n")) {
			t.Fatalf("Raw %q is not a head at the start of %q", h.Raw, data)
		}
		if h.Chunked != (h.ContentLength == -1) || h.ContentLength < -1 {
			t.Fatalf("framing: chunked %v, length %d", h.Chunked, h.ContentLength)
		}
		// What the proxy would rebuild (declining h2c) parses back to the same request.
		again, err := ParseRequestHead([]byte(serializeRequest(&h)))
		if err != nil {
			t.Fatalf("re-serialized head does not parse: %v\n%q", err, serializeRequest(&h))
		}
		again.Raw, h.Raw = nil, nil
		if !equalHeads(&h, &again) {
			t.Fatalf("round trip:\n%+v\n%+v", h, again)
		}
		// Where net/http reads the same request, it must frame the body the same way; otherwise one
		// request's body could be taken for the next request by one of the two.
		req, gerr := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
		if gerr != nil {
			return
		}
		goChunked := len(req.TransferEncoding) > 0 && req.TransferEncoding[0] == "chunked"
		if goChunked != h.Chunked || (!h.Chunked && req.ContentLength != h.ContentLength) {
			t.Fatalf("framing differs from net/http: ours chunked=%v length=%d, net/http %v length=%d",
				h.Chunked, h.ContentLength, req.TransferEncoding, req.ContentLength)
		}
		if req.Method != h.Method || req.RequestURI != h.Target {
			t.Fatalf("request line differs from net/http: %q %q vs %q %q", h.Method, h.Target, req.Method, req.RequestURI)
		}
	})
}

func FuzzParseResponseHead(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseResponseHead(data)
		if err != nil {
			if !errors.Is(err, ErrIncomplete) && !errors.Is(err, ErrHeadTooLarge) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if !bytes.HasPrefix(data, h.Raw) || h.Status < 100 || h.Status > 999 {
			t.Fatalf("head %+v", h)
		}
		if h.Chunked && h.ContentLength != -1 {
			t.Fatalf("chunked with length %d", h.ContentLength)
		}
		again, err := ParseResponseHead(h.Raw)
		if err != nil || again.Status != h.Status || len(again.Header) != len(h.Header) {
			t.Fatalf("reparse of Raw: %+v, %v", again, err)
		}
		resp, gerr := http.ReadResponse(bufio.NewReader(bytes.NewReader(data)), nil)
		if gerr != nil {
			return
		}
		resp.Body.Close()
		if resp.StatusCode != h.Status {
			t.Fatalf("status %d, net/http %d", h.Status, resp.StatusCode)
		}
		if goChunked := len(resp.TransferEncoding) > 0 && resp.TransferEncoding[0] == "chunked"; goChunked && !h.Chunked {
			t.Fatalf("net/http reads a chunked body, we do not")
		}
	})
}

// FuzzChunked checks that a chunked body is relayed byte for byte, ends where it should, and is one
// that net/http's chunked decoder reads the same way.
func FuzzChunked(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\nNEXT"))
	f.Add([]byte("3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n"))
	f.Add([]byte("a\nabcdefghij\n0\n\n"))
	f.Add([]byte("ffffffffffffffff\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		src := bufio.NewReaderSize(bytes.NewReader(data), 16)
		n, err := copyChunked(w, src)
		_ = w.Flush()
		if int64(out.Len()) != n {
			t.Fatalf("counted %d, wrote %d", n, out.Len())
		}
		if !bytes.HasPrefix(data, out.Bytes()) {
			t.Fatalf("relayed %q, not a prefix of %q", out.Bytes(), data)
		}
		if err != nil {
			return
		}
		rest, _ := io.ReadAll(src)
		if out.Len()+len(rest) != len(data) || !bytes.HasSuffix(out.Bytes(), []byte("\r\n\r\n")) {
			t.Fatalf("relayed %q, rest %q", out.Bytes(), rest)
		}
		// net/http must decode the same body from what we relayed; it stops at the last chunk,
		// before the trailer section.
		decoded, gerr := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(out.Bytes())))
		if gerr != nil {
			t.Fatalf("net/http cannot decode %q: %v", out.Bytes(), gerr)
		}
		var dataLen int64
		for off := 0; ; {
			line := out.Bytes()[off:]
			line = line[:bytes.IndexByte(line, '\n')+1]
			size, _ := chunkSize(line)
			if size == 0 {
				break
			}
			dataLen += size
			off += len(line) + int(size) + 2
		}
		if int64(len(decoded)) != dataLen {
			t.Fatalf("net/http decoded %d bytes, we framed %d", len(decoded), dataLen)
		}
	})
}

func serializeRequest(h *RequestHead) string {
	var b strings.Builder
	b.WriteString(h.Method + " " + h.Target + " " + h.Proto + "\r\n")
	for _, f := range h.Header {
		b.WriteString(f.Name + ": " + f.Value + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

func equalHeads(a, b *RequestHead) bool {
	if a.Method != b.Method || a.Target != b.Target || a.Proto != b.Proto || a.ContentLength != b.ContentLength ||
		a.Chunked != b.Chunked || a.Upgrade != b.Upgrade || a.Close != b.Close || a.Expect100 != b.Expect100 ||
		len(a.Header) != len(b.Header) {
		return false
	}
	for i := range a.Header {
		if a.Header[i] != b.Header[i] {
			return false
		}
	}
	return true
}
