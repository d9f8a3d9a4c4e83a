package dial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	opErr := func(err error) error { return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", err)} }
	tests := []struct {
		name string
		err  error
		want Kind
	}{
		{"refused", opErr(syscall.ECONNREFUSED), KindRefused},
		{"no such host", &net.DNSError{Err: "no such host", Name: "redis", IsNotFound: true}, KindUnknownHost},
		{"dns timeout", &net.DNSError{Err: "i/o timeout", Name: "redis", IsTimeout: true}, KindTimeout},
		{"host unreachable", opErr(syscall.EHOSTUNREACH), KindUnreachable},
		{"network unreachable", opErr(syscall.ENETUNREACH), KindUnreachable},
		{"connect timeout", opErr(syscall.ETIMEDOUT), KindTimeout},
		{"context deadline", fmt.Errorf("dial: %w", context.DeadlineExceeded), KindTimeout},
		{"permission", opErr(syscall.EPERM), KindForbidden},
		{"other", errors.New("boom"), KindInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestDialTCPAndUDP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 1500)
		n, from, err := pc.ReadFrom(buf)
		if err == nil {
			pc.WriteTo(buf[:n], from)
		}
	}()
	d := &Dialer{Timeout: 5 * time.Second}
	for _, tc := range []struct{ network, addr string }{{"tcp", ln.Addr().String()}, {"udp", pc.LocalAddr().String()}} {
		c, err := d.Dial(context.Background(), tc.network, tc.addr)
		if err != nil {
			t.Fatalf("%s: %v", tc.network, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("%s echo = %q, %v", tc.network, buf, err)
		}
		c.Close()
	}
}

func TestDialRefusedIsOneLine(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = (&Dialer{}).Dial(context.Background(), "tcp", addr)
	var de *Error
	if !errors.As(err, &de) || de.Kind != KindRefused {
		t.Fatalf("err = %v, want a refused dial error", err)
	}
	if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), fmt.Sprintf("%q", addr)) {
		t.Errorf("error %q should be one line quoting the address", err)
	}
}

func TestDialRejectsBadRequests(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{{"unix", "/tmp/x"}, {"tcp", "no-port"}} {
		_, err := (&Dialer{}).Dial(context.Background(), tc.network, tc.addr)
		var de *Error
		if !errors.As(err, &de) || de.Kind != KindForbidden {
			t.Errorf("Dial(%q, %q) = %v, want forbidden", tc.network, tc.addr, err)
		}
	}
}
