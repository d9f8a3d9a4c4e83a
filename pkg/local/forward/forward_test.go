package forward

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/trafficlab/kubectl-trafficlab/internal/loopbacktest"
)

// loopDialer stands in for the tunnel: it dials a real server on loopback for each remote address.
type loopDialer struct {
	addrs map[string]string // remote "host:port" -> local server address
}

func (d loopDialer) Dial(ctx context.Context, network, address string) (io.ReadWriteCloser, error) {
	a, ok := d.addrs[address]
	if !ok {
		return nil, errors.New("dial tcp: lookup " + address + ": no such host")
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, a)
}

// syncBuffer lets the test read output written by serving goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// upperServer answers everything it reads, upper-cased, after the client half-closes.
func upperServer(t *testing.T) string {
	t.Helper()
	return loopbacktest.Serve(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		c.Write(bytes.ToUpper(b))
	}).String()
}

func startForwarder(t *testing.T, d Dialer, specs ...Spec) (*Forwarder, []*Listener, *syncBuffer, *syncBuffer) {
	t.Helper()
	out, errOut := &syncBuffer{}, &syncBuffer{}
	f := &Forwarder{Dialer: d, Addresses: []string{"127.0.0.1"}, Out: out, ErrOut: errOut}
	ls, err := f.Listen(specs)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "" {
		t.Fatalf("Listen printed %q before the session exists", out.String())
	}
	f.Announce(ls, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		f.Serve(ctx, ls)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return f, ls, out, errOut
}

func TestForwardHalfClose(t *testing.T) {
	srv := upperServer(t)
	_, ls, out, _ := startForwarder(t, loopDialer{map[string]string{"redis:6379": srv}},
		Spec{Host: "redis", Port: 6379, Protocol: "tcp"})
	if !regexp.MustCompile(`^Forwarding from 127\.0\.0\.1:\d+ -> redis:6379\n$`).MatchString(out.String()) {
		t.Errorf("output = %q, want kubectl's Forwarding line", out.String())
	}
	c, err := net.Dial("tcp", ls[0].Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello through the pod"))
	// The server answers only after EOF: this fails unless the half-close crosses the forwarder.
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "HELLO THROUGH THE POD" {
		t.Errorf("got %q", got)
	}
}

func TestFailedDialClosesOnlyThatConnection(t *testing.T) {
	srv := upperServer(t)
	_, ls, _, errOut := startForwarder(t, loopDialer{map[string]string{"ok:80": srv}},
		Spec{Host: "nosuch", Port: 80, Protocol: "tcp"}, Spec{Host: "ok", Port: 80, Protocol: "tcp"})
	bad, err := net.Dial("tcp", ls[0].Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := bad.Read(make([]byte, 1)); n != 0 {
		t.Error("failed dial should close the local connection with no data")
	}
	bad.Close()
	if !strings.Contains(errOut.String(), "nosuch:80: dial tcp: lookup nosuch:80: no such host") {
		t.Errorf("error output = %q, want the reason", errOut.String())
	}
	good, err := net.Dial("tcp", ls[1].Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	good.Write([]byte("still up"))
	good.(*net.TCPConn).CloseWrite()
	if got, _ := io.ReadAll(good); string(got) != "STILL UP" {
		t.Errorf("after a failed dial the session should go on, got %q", got)
	}
}

func TestListenPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port
	f := &Forwarder{Addresses: []string{"127.0.0.1"}, Out: io.Discard, ErrOut: io.Discard}
	_, err = f.Listen([]Spec{{LocalPort: port, Host: "localhost", Port: 80, Protocol: "tcp"}})
	if err == nil || !strings.Contains(err.Error(), "address already in use") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error = %v, want one line saying the address is in use", err)
	}
}

func TestLocalhostMeansBothLoopbacks(t *testing.T) {
	got := expand([]string{"localhost", "0.0.0.0"})
	want := []string{"127.0.0.1", "::1", "0.0.0.0"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("expand = %v, want %v", got, want)
	}
}

// ":PORT" binds one free port on every address, as kubectl does.
func TestFreePortSharedAcrossAddresses(t *testing.T) {
	f := &Forwarder{Addresses: []string{"127.0.0.1", "127.0.0.2"}, Out: io.Discard, ErrOut: io.Discard}
	ls, err := f.Listen([]Spec{{Host: "localhost", Port: 80, Protocol: "tcp"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	if len(ls) != 2 || portOf(ls[0].Addr()) == 0 || portOf(ls[0].Addr()) != portOf(ls[1].Addr()) {
		t.Fatalf("listeners %v %v should share one free port", ls[0].Addr(), ls[1].Addr())
	}
}
