package dump

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/gopacket/gopacket"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/lineout"
)

// view turns captured frames into one line per HTTP exchange and per other TCP connection. It runs
// on the plugin: the agent only captures, so the pod pays for no decoding.
type view struct {
	out  *lineout.Writer // lines leave in batches; the views of a session's pods share it
	json bool
	// pod names the pod whose capture this view decodes, in every line.
	pod  string
	asm  *capture.Assembler
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	lastTS   time.Time // capture time of the newest packet, on the node's clock
	lastWall time.Time // when it arrived here
}

// flushEvery is how often the view lets the assembler time out holes and idle connections when no
// packet comes, so that the last exchanges of a quiet capture are still shown.
const flushEvery = 500 * time.Millisecond

func newView(out *lineout.Writer, asJSON bool, ports []int, pod string) *view {
	v := &view{out: out, json: asJSON, pod: pod, stop: make(chan struct{}), done: make(chan struct{})}
	opts := capture.AssemblerOptions{}
	for _, p := range ports {
		// Tells client from server for connections already open when the capture started.
		opts.ServerPorts = append(opts.ServerPorts, uint16(p))
	}
	v.asm = capture.NewAssembler(capture.HTTPStreams(capture.HTTPOptions{
		OnExchange:   v.exchange,
		OnConnection: v.connection,
	}), opts)
	go v.flusher()
	return v
}

// flusher advances the assembler's clock, which is the capture's (the node's), by the time that
// passed here since the newest packet: the two machines' clocks need not agree.
func (v *view) flusher() {
	defer close(v.done)
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	for {
		select {
		case <-v.stop:
			return
		case <-t.C:
			v.mu.Lock()
			ts, wall := v.lastTS, v.lastWall
			v.mu.Unlock()
			if !ts.IsZero() {
				v.asm.Flush(ts.Add(time.Since(wall)))
			}
		}
	}
}

func (v *view) packet(data []byte, ci gopacket.CaptureInfo) {
	v.mu.Lock()
	v.lastTS, v.lastWall = ci.Timestamp, time.Now()
	v.mu.Unlock()
	v.asm.Feed(data, ci)
}

// close ends every connection still open, which prints its exchanges, and writes what is buffered.
func (v *view) close() {
	close(v.stop)
	<-v.done
	v.asm.Close()
	_ = v.out.Flush()
}

// line is one JSON line of the live view.
type line struct {
	Kind       string    `json:"kind"`
	Pod        string    `json:"pod,omitempty"`
	Time       time.Time `json:"time"`
	Client     string    `json:"client"`
	Server     string    `json:"server"`
	Proto      string    `json:"proto,omitempty"`
	Method     string    `json:"method,omitempty"`
	Path       string    `json:"path,omitempty"`
	Status     int       `json:"status,omitempty"`
	GRPCStatus string    `json:"grpcStatus,omitempty"`
	LatencyMs  float64   `json:"latencyMs"`
	ReqBytes   int64     `json:"reqBytes"`
	RespBytes  int64     `json:"respBytes"`
	Partial    bool      `json:"partial,omitempty"`
	Gaps       int       `json:"gaps,omitempty"`
}

func (v *view) exchange(e capture.Exchange) {
	if v.json {
		v.writeJSON(line{
			Kind: "http", Pod: v.pod, Time: e.Start.UTC(), Client: e.Client.String(), Server: e.Server.String(),
			Proto: e.Proto, Method: e.Method, Path: e.Path, Status: e.Status, GRPCStatus: e.GRPCStatus,
			LatencyMs: ms(e.Latency), ReqBytes: e.ReqBytes, RespBytes: e.RespBytes, Partial: e.Partial,
		})
		return
	}
	status := "-"
	if e.Status != 0 {
		status = fmt.Sprint(e.Status)
	}
	if e.GRPCStatus != "" {
		status += " grpc-status=" + lineout.Escape(e.GRPCStatus)
	}
	partial := ""
	if e.Partial {
		partial = " (partial)"
	}
	// What a client sent is escaped: a terminal obeys the control sequences in it (lineout.Escape).
	fmt.Fprintf(v.out, "%s%s %s %s %s %s %s %s %dB/%dB%s\n", v.prefix(), e.Start.Format("15:04:05.000"), e.Client, lineout.Escape(e.Proto),
		orDash(lineout.Escape(e.Method)), orDash(lineout.Escape(e.Path)), status, e.Latency.Round(10*time.Microsecond), e.ReqBytes, e.RespBytes, partial)
}

func (v *view) connection(c capture.Connection) {
	if v.json {
		v.writeJSON(line{
			Kind: "connection", Pod: v.pod, Time: c.Start.UTC(), Client: c.Client.String(), Server: c.Server.String(),
			LatencyMs: ms(c.Duration), ReqBytes: c.BytesIn, RespBytes: c.BytesOut, Gaps: c.Gaps,
		})
		return
	}
	gaps := ""
	if c.Gaps > 0 {
		gaps = fmt.Sprintf(" (%d gaps)", c.Gaps)
	}
	fmt.Fprintf(v.out, "%s%s %s -> %s TCP %s %dB/%dB%s\n", v.prefix(), c.Start.Format("15:04:05.000"), c.Client, c.Server,
		c.Duration.Round(time.Millisecond), c.BytesIn, c.BytesOut, gaps)
}

// prefix starts a text line with its pod, as kubectl logs --prefix does.
func (v *view) prefix() string {
	if v.pod == "" {
		return ""
	}
	return "[pod/" + v.pod + "] "
}

func (v *view) writeJSON(l line) {
	b, err := json.Marshal(l)
	if err == nil {
		fmt.Fprintf(v.out, "%s\n", b)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
