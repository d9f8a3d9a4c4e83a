package capture

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// flowOp is one call on an HTTPFlow in FuzzHTTPFlow's input encoding.
type flowOp struct {
	dir  Direction
	kind byte // 'd' data, 'g' gap, 'e' end
	data string
	gap  byte // gap size in units of 7 bytes; 0 is GapUnknown
	why  EndReason
	back bool // the capture time goes back a little (runs of reordered segments)
}

// encodeFlowOps writes ops in FuzzHTTPFlow's input encoding: per op a header byte (bit 0
// direction, bits 1-2 kind, bits 3-6 milliseconds to advance, bit 7 time goes back), then
// for data a length byte and that many bytes, for a gap its size byte, for an end its
// reason byte.
func encodeFlowOps(ops []flowOp) []byte {
	var out []byte
	for _, op := range ops {
		h := byte(op.dir) | 1<<3
		if op.back {
			h |= 0x80
		}
		switch op.kind {
		case 'd':
			for data := op.data; len(data) > 0; {
				n := min(len(data), 255)
				out = append(out, h, byte(n))
				out = append(out, data[:n]...)
				data = data[n:]
			}
			continue
		case 'g':
			out = append(out, h|1<<1, op.gap)
		case 'e':
			out = append(out, h|2<<1, byte(op.why))
		}
	}
	return out
}

func flowOpsOf(chunks []chunk) []flowOp {
	var ops []flowOp
	for _, c := range chunks {
		dir := ServerToClient
		if c.fromClient {
			dir = ClientToServer
		}
		ops = append(ops, flowOp{dir: dir, kind: 'd', data: c.data})
	}
	return ops
}

// h2TrailerConversation is an h2c upload with a request trailer and a gRPC call.
func h2TrailerConversation() []chunk {
	cl, sv := newH2Side(true), newH2Side(false)
	cl.headers(1, false, ":method", "PUT", ":scheme", "http", ":path", "/up", "content-type", "text/plain")
	cl.data(1, false, 5, 2)
	cl.headers(1, true, "x-sum", "5")
	cl.headers(3, false, ":method", "POST", ":path", "/g.S/M", "content-type", "application/grpc")
	cl.data(3, true, 10, 0)
	sv.settings()
	sv.headers(1, true, ":status", "204")
	sv.headers(3, false, ":status", "100")
	sv.headers(3, false, ":status", "200", "content-type", "application/grpc")
	sv.data(3, false, 7, 0)
	sv.headers(3, true, "grpc-status", "0")
	return []chunk{{true, cl.take()}, {false, sv.take()}}
}

func FuzzHTTPFlow(f *testing.F) {
	ka, _ := keepAlive()
	h2, _ := h2cConversation()
	gapped := flowOpsOf(ka)
	gapped = append(gapped[:3:3], append([]flowOp{{dir: ClientToServer, kind: 'g', gap: 3}}, gapped[3:]...)...)
	for _, ops := range [][]flowOp{
		flowOpsOf(ka),
		flowOpsOf(h2),
		gapped,
		append([]flowOp{{kind: 'g'}, {dir: ServerToClient, kind: 'g'}}, flowOpsOf(ka)[2:]...),
		{{kind: 'd', data: "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"},
			{dir: ServerToClient, kind: 'd', data: "HTTP/1.1 101 Switching\r\nUpgrade: h2c\r\n\r\n" + h2[1].data}},
		{{kind: 'd', data: "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe"}, {kind: 'g', gap: 1},
			{kind: 'd', data: "\r\n0\r\n\r\n"}, {dir: ServerToClient, kind: 'd', data: "HTTP/1.0 200 OK\r\n\r\nbody", back: true},
			{dir: ServerToClient, kind: 'e', why: EndIdle}},
		{{kind: 'd', data: "PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"},
			{dir: ServerToClient, kind: 'd', data: "HTTP/1.1 100 Continue\r\n\r\n"}, {kind: 'd', data: "abcHEAD / HTTP/1.1\r\n\r\n"},
			{dir: ServerToClient, kind: 'd', data: "HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"}},
		{{kind: 'd', data: "POST /c HTTP/1.1\r\nX-A: 1\r\n 2\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nX-Sum: 3\r\n\r\n"},
			{dir: ServerToClient, kind: 'd', data: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nGrpc-Status: 0\r\n\r\n"}},
		{{kind: 'd', data: "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"},
			{dir: ServerToClient, kind: 'd', data: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"},
			{kind: 'd', data: "GET / HTTP/1.1\r\n\r\n"}},
		flowOpsOf(h2TrailerConversation()),
	} {
		f.Add(encodeFlowOps(ops))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		// Two decoders get the same calls; the second one's data is overwritten as soon as
		// each call returns, as an Assembler's is: both must report the same. Both keep
		// requests and responses; a third one does not, and must report the same exchanges.
		var outs [3][]string
		var connections [3]int
		var flows [3]*HTTPFlow
		var client []byte // what the client sent, gaps left out
		var summaries [3][]string
		for i := range flows {
			var told map[uint64]bool
			var settled bool
			opts := HTTPOptions{
				OnExchange: func(e Exchange) {
					if e.Status != 0 && (e.Status < 100 || e.Status > 999) || e.ReqBytes < 0 || e.RespBytes < 0 || e.Latency < 0 {
						t.Fatalf("exchange %+v", e)
					}
					if e.Proto == "" || strings.ContainsAny(e.Method, " \r\n") {
						t.Fatalf("exchange %+v", e)
					}
					if i < 2 {
						if !settled || (e.Seq != 0 && !told[e.Seq]) {
							t.Fatalf("exchange %+v before its protocol (%v) or request", e, settled)
						}
						if e.Response == nil && e.Status >= 200 && !e.Partial {
							t.Fatalf("exchange %+v without its response", e)
						}
						if p := e.Response; p != nil && len(p.Body) > int(e.RespBytes) {
							t.Fatalf("response of %d bytes kept %d", e.RespBytes, len(p.Body))
						}
						outs[i] = append(outs[i], responseKey(e))
					}
					resp := e.Response
					e.Response = nil
					outs[i] = append(outs[i], fmt.Sprintf("%+v", e))
					summaries[i] = append(summaries[i], fmt.Sprintf("%+v", e))
					if i == 2 && resp != nil {
						t.Fatal("a response kept without KeepResponses")
					}
				},
				OnConnection: func(c Connection) {
					connections[i]++
					if c.BytesIn < 0 || c.BytesOut < 0 || c.Duration < 0 || connections[i] > 1 {
						t.Fatalf("connection %+v (#%d)", c, connections[i])
					}
					outs[i] = append(outs[i], fmt.Sprintf("%+v", c))
				},
				// Small limits, so that the fuzzer reaches them.
				MaxHeaderBytes: 1024,
				MaxBuffer:      4096,
			}
			if i < 2 {
				told = map[uint64]bool{}
				opts.OnProtocol = func(_ Flow, proto string) {
					if settled || (proto != ProtoHTTP1 && proto != ProtoH2C && proto != ProtoOpaque) {
						t.Fatalf("protocol %q, settled before: %v", proto, settled)
					}
					settled = true
					outs[i] = append(outs[i], proto)
				}
				opts.OnRequest = func(q *Request) {
					if !settled || q.Seq == 0 || told[q.Seq] {
						t.Fatalf("request %s: settled %v, told before %v", requestKey(q), settled, told[q.Seq])
					}
					told[q.Seq] = true
					checkFuzzedRequest(t, q, client, opts.MaxBody)
					outs[i] = append(outs[i], requestKey(q)+fmt.Sprintf(" trunc=%v raw=%q", q.Truncated, q.Raw))
				}
				opts.KeepResponses = true
				opts.MaxBody = 300
			}
			flows[i] = NewHTTPFlow(Flow{Client: netipMust("10.0.0.2:40000"), Server: netipMust("10.0.0.1:80"), Start: streamT0}, opts)
		}
		scratch := make([]byte, 256)
		now := streamT0
		for len(in) > 0 {
			h := in[0]
			in = in[1:]
			dir := Direction(h & 1)
			now = now.Add(time.Duration(h>>3&15) * time.Millisecond)
			if h&0x80 != 0 {
				now = now.Add(-3 * time.Millisecond)
			}
			arg := byte(0)
			if len(in) > 0 {
				arg, in = in[0], in[1:]
			}
			switch h >> 1 & 3 {
			case 0, 3:
				n := min(int(arg), len(in))
				if dir == ClientToServer && !flows[0].ended[dir] && !flows[0].finished {
					client = append(client, in[:n]...)
				}
				flows[0].Data(dir, bytes.Clone(in[:n]), now)
				flows[2].Data(dir, bytes.Clone(in[:n]), now)
				copy(scratch, in[:n])
				flows[1].Data(dir, scratch[:n], now)
				for i := range scratch {
					scratch[i] = 'X'
				}
				in = in[n:]
			case 1:
				n := int(arg) * 7
				if arg == 0 {
					n = GapUnknown
				}
				for _, fl := range flows {
					fl.Gap(dir, n, now)
				}
			case 2:
				for _, fl := range flows {
					fl.End(dir, EndReason(arg%4+1), now)
				}
			}
			fl := flows[0]
			// Bounded memory: a head, a control frame, or what waits for the other side.
			for d := range fl.buf {
				if n := fl.buf[d].len(); n > 32<<10 {
					t.Fatalf("%s holds %d bytes", Direction(d), n)
				}
			}
			if fl.stuck {
				t.Fatal("the decoder stopped making progress")
			}
			if fl.held < 0 || fl.held > fl.maxHeld() {
				t.Fatalf("%d bytes kept, the budget is %d", fl.held, fl.maxHeld())
			}
		}
		for _, fl := range flows {
			fl.End(ClientToServer, EndFIN, now)
			fl.End(ServerToClient, EndFIN, now)
			if !fl.finished || fl.stuck || fl.held != 0 {
				t.Fatalf("finished %v stuck %v, %d bytes still kept", fl.finished, fl.stuck, fl.held)
			}
			if fl.opts.OnProtocol != nil && !fl.settled {
				t.Fatal("the protocol was never reported")
			}
		}
		if !slices.Equal(summaries[0], summaries[2]) {
			t.Fatalf("keeping requests changes the exchanges:\n%s\n%s", strings.Join(summaries[0], "\n"), strings.Join(summaries[2], "\n"))
		}
		if len(outs[0]) == 0 {
			t.Fatal("a connection ended with neither exchanges nor a summary")
		}
		if !slices.Equal(outs[0], outs[1]) {
			t.Fatalf("decoding depends on the caller's buffer after the call:\n%s\n%s",
				strings.Join(outs[0], "\n"), strings.Join(outs[1], "\n"))
		}
		// Nothing more comes after the end.
		flows[0].Data(ClientToServer, []byte("GET / HTTP/1.1\r\n\r\n"), now)
		flows[0].End(ClientToServer, EndFIN, now)
		if len(outs[0]) != len(outs[1]) {
			t.Fatal("output after the end")
		}
	})
}

// checkFuzzedRequest checks a reported request against what the client sent: its Raw is a
// run of the client's bytes that decodes, alone, to the same request.
func checkFuzzedRequest(t *testing.T, q *Request, client []byte, maxBody int) {
	t.Helper()
	if len(q.Body) > maxBody || q.End.Before(q.Start) || (q.StreamID == 0) != strings.HasPrefix(q.Proto, "HTTP/1.") {
		t.Fatalf("request %s", requestKey(q))
	}
	if q.Raw == nil {
		if !q.Partial && !q.Truncated && q.Proto != "h2c" {
			t.Fatalf("request %s without its raw bytes", requestKey(q))
		}
		return
	}
	if q.Partial || q.Truncated || !bytes.HasPrefix(q.Raw, []byte(q.Method+" "+q.Target+" "+q.Proto)) ||
		!bytes.Contains(client, q.Raw) || len(q.Raw) < len(q.Body) {
		t.Fatalf("request %s with raw %q", requestKey(q), q.Raw)
	}
	var again []*Request
	f := NewHTTPFlow(q.Flow, HTTPOptions{
		OnRequest: func(r *Request) { again = append(again, r) }, MaxHeaderBytes: 1024, MaxBody: maxBody,
	})
	f.Data(ClientToServer, bytes.Clone(q.Raw), q.Start)
	f.End(ClientToServer, EndFIN, q.End)
	f.End(ServerToClient, EndFIN, q.End)
	if len(again) != 1 || again[0].Seq != 1 {
		t.Fatalf("raw %q of %s decodes to %d requests", q.Raw, requestKey(q), len(again))
	}
	a := *again[0]
	a.Seq = q.Seq
	if requestKey(&a) != requestKey(q) || !bytes.Equal(a.Raw, q.Raw) {
		t.Fatalf("raw %q decodes to\n%s, not\n%s", q.Raw, requestKey(&a), requestKey(q))
	}
}
