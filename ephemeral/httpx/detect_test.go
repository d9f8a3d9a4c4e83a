package httpx

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// peekOne accepts one connection from a listener, peeks at it and hands the result over.
func peekOne(t *testing.T, timeout time.Duration) (addr string, got <-chan peekResult) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan peekResult, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- peekResult{err: err}
			return
		}
		dc := &deadlineConn{Conn: c}
		start := time.Now()
		pk, err := Peek(dc, timeout)
		ch <- peekResult{pk: pk, err: err, start: start, deadlines: dc.deadlines, conn: c}
	}()
	return ln.Addr().String(), ch
}

type peekResult struct {
	pk        Peeked
	err       error
	start     time.Time   // just before Peek
	deadlines []time.Time // the read deadlines Peek set, in order
	conn      net.Conn
}

// deadlineConn records the read deadlines set on it; only Peek's goroutine uses it.
type deadlineConn struct {
	net.Conn
	deadlines []time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.deadlines = append(c.deadlines, t)
	return c.Conn.SetReadDeadline(t)
}

func TestPeekServerFirst(t *testing.T) {
	addr, ch := peekOne(t, 150*time.Millisecond)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := <-ch
	defer r.conn.Close()
	if r.err != nil || r.pk.Proto != ProtoUnknown || len(r.pk.Prefix) != 0 || r.pk.First != nil {
		t.Errorf("Peek = %+v, %v; want unknown, empty", r.pk, r.err)
	}
	// Peek gave the client its whole timeout to speak, and cleared the deadline after.
	if len(r.deadlines) != 2 || r.deadlines[0].Before(r.start.Add(150*time.Millisecond)) || !r.deadlines[1].IsZero() {
		t.Errorf("read deadlines %v set by a Peek started at %v with a 150ms timeout; want one at least 150ms on, then none", r.deadlines, r.start)
	}
	// The deadline must be gone: the connection is usable for the relay afterwards.
	go func() { _, _ = io.WriteString(c, "late") }()
	buf := make([]byte, 4)
	_ = r.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(r.conn, buf); err != nil || string(buf) != "late" {
		t.Errorf("read after Peek: %q, %v", buf, err)
	}
}

func TestPeekClosedAtOnce(t *testing.T) {
	addr, ch := peekOne(t, time.Second)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	r := <-ch
	defer r.conn.Close()
	if !errors.Is(r.err, io.EOF) || len(r.pk.Prefix) != 0 {
		t.Errorf("Peek = %+v, %v; want io.EOF", r.pk, r.err)
	}
}

func TestPeekHTTP1(t *testing.T) {
	addr, ch := peekOne(t, 5*time.Second)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The head arrives in pieces; Peek must wait for all of it, and not read past it into the body
	// that follows later.
	head := "POST /probe?x=1 HTTP/1.1\r\nHost: pod\r\nUser-Agent: kube-probe/1.33\r\nContent-Length: 4\r\n\r\n"
	for _, part := range []string{head[:2], head[2:20], head[20:]} {
		_, _ = io.WriteString(c, part)
		time.Sleep(20 * time.Millisecond)
	}
	r := <-ch
	defer r.conn.Close()
	if r.err != nil || r.pk.Proto != ProtoHTTP1 || r.pk.First == nil {
		t.Fatalf("Peek = %+v, %v", r.pk, r.err)
	}
	if f := r.pk.First; f.Method != "POST" || f.Target != "/probe?x=1" || !isProbe(f) || string(f.Raw) != head ||
		string(r.pk.Prefix) != head {
		t.Errorf("first head %+v, prefix %q", f, r.pk.Prefix)
	}
}

func TestPeekH2C(t *testing.T) {
	addr, ch := peekOne(t, 5*time.Second)
	var dials atomic.Int64
	c := h2Client(t, &dials)
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/grpc.health.v1.Health/Check?x=1", nil)
		req.Header.Set("User-Agent", "kube-probe/1.33 grpc-go/1.70.0")
		req.Header.Set("X-Steal", "yes")
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	r := <-ch
	if r.err != nil || r.pk.Proto != ProtoH2C || r.pk.First == nil {
		t.Fatalf("Peek = %+v, %v", r.pk, r.err)
	}
	f := r.pk.First
	if f.Method != "GET" || f.Target != "/grpc.health.v1.Health/Check?x=1" || f.Proto != "HTTP/2.0" || !isProbe(f) ||
		f.Get("x-steal") != "yes" || f.Get("host") != addr || f.ContentLength != 0 {
		t.Errorf("first head %+v", f)
	}
	// The prefix replays: the same connection is then served normally.
	app := whoServer(t, "app", true, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	serveDone := make(chan error, 1)
	go func() {
		serveDone <- ServeH2C(ctx, r.conn, r.pk.Prefix, Route{App: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", app.addr())
		}})
	}()
	if err := <-done; err != nil {
		t.Errorf("request after Peek: %v", err)
	}
	c.CloseIdleConnections()
	if err := <-serveDone; err != nil {
		t.Errorf("ServeH2C: %v", err)
	}
}
