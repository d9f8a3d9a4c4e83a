package dial

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

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

// The plugin tells the user why a dial failed from the code alone, so the cause must survive wrapping.
func TestDialFailuresKeepTheirCode(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	nxdomain := nxdomainResolver(t)
	tests := []struct {
		name, network, addr string
		resolver            *net.Resolver
		want                wire.Code
	}{
		{"refused", "tcp", closed, nil, wire.CodeRefused},
		{"unsupported network", "unix", "/tmp/x", nil, wire.CodeUnsupported},
		{"no port", "tcp", "no-port", nil, wire.CodeBadRequest},
		{"unknown name", "tcp", "redis.invalid:6379", nxdomain, wire.CodeUnknownHost},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := (&Dialer{Timeout: 2 * time.Second, Resolver: tt.resolver}).Dial(context.Background(), tt.network, tt.addr)
			if err == nil {
				t.Fatal("want an error")
			}
			if got := wire.CodeFor(err); got != tt.want {
				t.Errorf("CodeFor(%v) = %v, want %v", err, got, tt.want)
			}
			if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.addr)) && tt.network != "unix" {
				t.Errorf("error %q should be one line quoting the address", err)
			}
		})
	}
}

// nxdomainResolver points Go's resolver at a DNS server on loopback that knows no names, so the test
// sends no query off the machine.
func nxdomainResolver(t *testing.T) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RCode: dnsmessage.RCodeNameError})
			b.StartQuestions()
			b.Question(q)
			if out, err := b.Finish(); err == nil {
				pc.WriteTo(out, from)
			}
		}
	}()
	addr := pc.LocalAddr().String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}

// A forwarded connection leaves the pod as the pod's own do: without the agent's pass-through
// mark, which only the agent's connections back to the app carry, so that in a meshed pod it goes
// out through the sidecar with the pod's identity.
func TestDialCarriesNoMark(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := (&Dialer{}).Dial(context.Background(), wire.NetworkTCP, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	var serr error
	if err := rc.Control(func(fd uintptr) { mark, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatalf("getsockopt SO_MARK: %v", serr)
	}
	if mark != 0 {
		t.Errorf("SO_MARK %#x, want none", mark)
	}
}
