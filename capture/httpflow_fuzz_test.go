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
	} {
		f.Add(encodeFlowOps(ops))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		// Two decoders get the same calls; the second one's data is overwritten as soon as
		// each call returns, as an Assembler's is: both must report the same.
		var outs [2][]string
		var connections [2]int
		var flows [2]*HTTPFlow
		for i := range flows {
			opts := HTTPOptions{
				OnExchange: func(e Exchange) {
					if e.Status != 0 && (e.Status < 100 || e.Status > 999) || e.ReqBytes < 0 || e.RespBytes < 0 || e.Latency < 0 {
						t.Fatalf("exchange %+v", e)
					}
					if e.Proto == "" || strings.ContainsAny(e.Method, " \r\n") {
						t.Fatalf("exchange %+v", e)
					}
					outs[i] = append(outs[i], fmt.Sprintf("%+v", e))
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
				flows[0].Data(dir, bytes.Clone(in[:n]), now)
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
				flows[0].Gap(dir, n, now)
				flows[1].Gap(dir, n, now)
			case 2:
				flows[0].End(dir, EndReason(arg%4+1), now)
				flows[1].End(dir, EndReason(arg%4+1), now)
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
		}
		for _, fl := range flows {
			fl.End(ClientToServer, EndFIN, now)
			fl.End(ServerToClient, EndFIN, now)
			if !fl.finished || fl.stuck {
				t.Fatalf("finished %v stuck %v", fl.finished, fl.stuck)
			}
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
