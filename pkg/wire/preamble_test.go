package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
)

// handshakeResult is what each half of one data-connection handshake returned.
type handshakeResult struct {
	client, server error
}

// runHandshake runs ClientTunnel against srv over a loopback TCP pair and returns both errors,
// closing whatever succeeded.
func runHandshake(t *testing.T, srv *DataServer, pin KeyPin, secret Secret) handshakeResult {
	t.Helper()
	cc, sc := tcpPair(t)
	serr := make(chan error, 1)
	go func() {
		m, err := srv.Accept(sc)
		if m != nil {
			defer m.Close()
		}
		serr <- err
	}()
	m, err := ClientTunnel(context.Background(), cc, pin, secret, DefaultMuxConfig())
	if m != nil {
		m.Close()
	} else {
		cc.Close()
	}
	return handshakeResult{client: err, server: <-serr}
}

func TestDataHandshake(t *testing.T) {
	key, other := testKey(t), testKey(t)
	secret := testSecret(t)
	wrongSecret := secret
	wrongSecret[0] ^= 1
	limit := errors.New("over the limit")
	tests := []struct {
		name       string
		srv        DataServer
		pin        KeyPin
		secret     Secret
		clientWant error
		serverWant error
	}{
		{"ok", DataServer{Key: key, Secret: secret}, key.Pin(), secret, nil, nil},
		// Something on the pod's lo answers with its own key: the plugin never sends it the secret.
		{"wrong pin", DataServer{Key: other, Secret: secret}, key.Pin(), secret, ErrKeyPin, nil},
		{"zero pin", DataServer{Key: key, Secret: secret}, KeyPin{}, secret, ErrKeyPin, nil},
		{"wrong secret", DataServer{Key: key, Secret: secret}, key.Pin(), wrongSecret, ErrForbidden, ErrBadSecret},
		{"admit refuses", DataServer{Key: key, Secret: secret, Admit: func() error { return fmt.Errorf("%w: %w", limit, ErrDataConnLimit) }}, key.Pin(), secret, ErrForbidden, ErrDataConnLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := runHandshake(t, &tt.srv, tt.pin, tt.secret)
			if !errors.Is(got.client, tt.clientWant) || (tt.clientWant == nil) != (got.client == nil) {
				t.Errorf("plugin: %v, want %v", got.client, tt.clientWant)
			}
			if tt.serverWant == nil && tt.clientWant != nil {
				// The plugin hung up during TLS; the agent saw a failed handshake, whatever its words.
				if got.server == nil {
					t.Error("agent accepted a connection the plugin refused")
				}
				return
			}
			if !errors.Is(got.server, tt.serverWant) || (tt.serverWant == nil) != (got.server == nil) {
				t.Errorf("agent: %v, want %v", got.server, tt.serverWant)
			}
		})
	}
}

// TestDataHandshakeWrongPinNeverSendsSecret: a listener that is not the agent (any process of the pod
// can bind a port and wait) gets neither the secret nor anything but a TLS ClientHello.
func TestDataHandshakeWrongPinNeverSendsSecret(t *testing.T) {
	key, impostor := testKey(t), testKey(t)
	secret := testSecret(t)
	cc, sc := tcpPair(t)
	rec := &recorder{}
	got := make(chan []byte, 1)
	go func() {
		// The impostor runs a real TLS 1.3 server and reads whatever the plugin sends after it.
		m, _ := (&DataServer{Key: impostor, Secret: secret}).Accept(&recordingConn{Conn: sc, rec: rec})
		if m != nil {
			m.Close()
		}
		got <- rec.bytes()
	}()
	_, err := ClientTunnel(context.Background(), cc, key.Pin(), secret, DefaultMuxConfig())
	if !errors.Is(err, ErrKeyPin) {
		t.Fatalf("plugin: %v, want ErrKeyPin", err)
	}
	if b := <-got; bytes.Contains(b, secret[:]) {
		t.Error("the plugin sent the secret in clear to a listener with the wrong key")
	}
}

// TestDataConnectionNoClearSecret records every byte both ends put on a loopback TCP connection, as
// a NET_RAW neighbour capturing the pod's lo would, and finds neither the session secret nor a
// stream's payload in it.
func TestDataConnectionNoClearSecret(t *testing.T) {
	key, secret := testKey(t), testSecret(t)
	cc, sc := tcpPair(t)
	rec := &recorder{}
	type res struct {
		m   *Mux
		err error
	}
	sr := make(chan res, 1)
	go func() {
		m, err := (&DataServer{Key: key, Secret: secret, Mux: DefaultMuxConfig()}).Accept(&recordingConn{Conn: sc, rec: rec})
		sr <- res{m, err}
	}()
	client, err := ClientTunnel(context.Background(), &recordingConn{Conn: cc, rec: rec}, key.Pin(), secret, DefaultMuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	r := <-sr
	if r.err != nil {
		t.Fatal(r.err)
	}
	serve(t, r.m, handlers{"app:80": echo})
	payload := []byte("POST /login HTTP/1.1\r\nAuthorization: Bearer tok-7f3a9c\r\n\r\n")
	st, err := client.Open(context.Background(), dialReq("app:80"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, payload) {
		t.Fatalf("echo returned %q", back)
	}
	st.Close()
	wire := rec.bytes()
	if bytes.Contains(wire, secret[:]) {
		t.Error("the session secret crossed the data connection in clear")
	}
	if bytes.Contains(wire, []byte("tok-7f3a9c")) {
		t.Error("a stream's payload crossed the data connection in clear")
	}
	if !bytes.HasPrefix(wire, AppendPreamble(nil, Protocol)) {
		t.Errorf("the connection starts with %x, want the clear preamble", wire[:min(len(wire), 8)])
	}
}

func TestDataHandshakeProtocolMismatch(t *testing.T) {
	t.Run("plugin newer (agent side)", func(t *testing.T) {
		cc, sc := tcpPair(t)
		defer cc.Close()
		serr := make(chan error, 1)
		go func() {
			_, err := (&DataServer{Key: testKey(t), Secret: testSecret(t)}).Accept(sc)
			serr <- err
		}()
		if _, err := cc.Write(AppendPreamble(nil, Protocol+1)); err != nil {
			t.Fatal(err)
		}
		// The answer comes in clear, so that a peer of any protocol can read it.
		proto, code, err := ReadPreambleAck(cc)
		if err != nil || proto != Protocol || code != CodeProtocolMismatch {
			t.Errorf("answer: protocol %d code %v err %v", proto, code, err)
		}
		if err := <-serr; !errors.Is(err, ErrProtocolMismatch) {
			t.Errorf("agent: %v", err)
		}
	})
	t.Run("agent older (plugin side)", func(t *testing.T) {
		cc, sc := tcpPair(t)
		defer sc.Close()
		go func() {
			_, _ = ReadPreamble(sc)
			ack := AppendPreambleAck(nil, CodeProtocolMismatch)
			ack[4], ack[5] = 0, 1 // a protocol-1 agent
			_, _ = sc.Write(ack)
		}()
		key := testKey(t)
		_, err := ClientTunnel(context.Background(), cc, key.Pin(), testSecret(t), DefaultMuxConfig())
		want := "agent speaks protocol 1, this plugin speaks 2: the agent image is older: use the agent image released with this plugin (drop --agent-image or pull the matching tag)"
		if err == nil || err.Error() != want {
			t.Errorf("got %v\nwant %s", err, want)
		}
	})
}

func TestKeyPinText(t *testing.T) {
	p := fixedPin()
	b, err := p.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	var q KeyPin
	if err := q.UnmarshalText(b); err != nil || q != p {
		t.Errorf("round trip: %v, %v", q, err)
	}
	if err := q.UnmarshalText([]byte("AAEC")); !errors.Is(err, ErrMalformed) {
		t.Errorf("short pin: %v", err)
	}
}

// recorder holds what one or more connections wrote, in order.
type recorder struct {
	mu sync.Mutex
	b  []byte
}

func (r *recorder) add(p []byte) {
	r.mu.Lock()
	r.b = append(r.b, p...)
	r.mu.Unlock()
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.b)
}

type recordingConn struct {
	net.Conn
	rec *recorder
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.rec.add(p)
	return c.Conn.Write(p)
}
