package wire

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"time"

	"github.com/hashicorp/yamux"
)

// Data-connection handshake. The plugin writes, in clear,
//
//	"TLD\x01" | protocol uint16
//
// then runs a TLS 1.3 client on the connection, accepting only the key whose pin (KeyPin) the agent
// sent in its Welcome on the control channel. Inside TLS it writes the session secret, and the agent
// answers
//
//	"TLA\x01" | protocol uint16 | code uint8
//
// before either side starts yamux. A protocol mismatch is answered in clear, before TLS, so that a
// peer of any protocol can still say which side to upgrade.
//
// The data connection crosses the pod's loopback (port-forward and the exec relay both end there),
// which any container of the pod with NET_RAW can read and write. TLS keeps the secret and the
// streams from it; the pin, which only the exec channel (TLS to the apiserver and kubelet) carries,
// keeps it from putting itself in the middle; the secret keeps any other process of the pod from
// getting a tunnel; and a recorded handshake replayed later meets fresh TLS keys and fails.
const (
	PreambleMagic    = "TLD\x01"
	PreambleAckMagic = "TLA\x01"
	// PreambleSize is the length of the plugin's clear preamble.
	PreambleSize = 4 + 2
	// PreambleAckSize is the length of the agent's answer (inside TLS, or in clear for a mismatch).
	PreambleAckSize = 4 + 2 + 1
)

// AppendPreamble appends the plugin's clear preamble for protocol to dst.
func AppendPreamble(dst []byte, protocol int) []byte {
	dst = append(dst, PreambleMagic...)
	return binary.BigEndian.AppendUint16(dst, uint16(protocol))
}

// ReadPreamble reads the plugin's clear preamble and returns its protocol number.
func ReadPreamble(r io.Reader) (int, error) {
	var b [PreambleSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, fmt.Errorf("read data preamble: %w", err)
	}
	if string(b[:4]) != PreambleMagic {
		return 0, fmt.Errorf("data preamble starts with %q, want %q: %w", b[:4], PreambleMagic, ErrBadMagic)
	}
	return int(binary.BigEndian.Uint16(b[4:6])), nil
}

// AppendPreambleAck appends the agent's answer.
func AppendPreambleAck(dst []byte, code Code) []byte {
	dst = append(dst, PreambleAckMagic...)
	dst = binary.BigEndian.AppendUint16(dst, Protocol)
	return append(dst, byte(code))
}

// ReadPreambleAck reads the agent's answer and returns its protocol number and code.
func ReadPreambleAck(r io.Reader) (protocol int, code Code, err error) {
	var b [PreambleAckSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, 0, fmt.Errorf("read data preamble answer: %w", err)
	}
	if string(b[:4]) != PreambleAckMagic {
		return 0, 0, fmt.Errorf("data preamble answer starts with %q, want %q: %w", b[:4], PreambleAckMagic, ErrBadMagic)
	}
	code = Code(b[6])
	if code >= codeMax {
		code = CodeInternal
	}
	return int(binary.BigEndian.Uint16(b[4:6])), code, nil
}

// ackError turns the agent's answer into the plugin's error; nil for ok.
func ackError(proto int, code Code) error {
	switch {
	case code == CodeProtocolMismatch || proto != Protocol:
		return &MismatchError{Local: RolePlugin, LocalProtocol: Protocol, RemoteProtocol: proto}
	case code == CodeForbidden:
		return fmt.Errorf("agent refused the data connection (a wrong secret, or more connections than the Hello declared): %w", ErrForbidden)
	case code != CodeOK:
		return fmt.Errorf("agent refused the data connection: %w", &RemoteError{Code: code, Message: code.String()})
	}
	return nil
}

// KeyPinSize is the length of a key pin: a SHA-256.
const KeyPinSize = sha256.Size

// KeyPin is the SHA-256 of the SubjectPublicKeyInfo of the agent's data key. The agent sends it in
// its Welcome, over the exec channel; the plugin accepts a data connection only from that key.
type KeyPin [KeyPinSize]byte

// PinOf is the pin of cert's public key.
func PinOf(cert *x509.Certificate) KeyPin { return sha256.Sum256(cert.RawSubjectPublicKeyInfo) }

// IsZero reports an unset pin, which no Welcome may carry.
func (p KeyPin) IsZero() bool { return p == KeyPin{} }

// Equal compares two pins. A pin is public; the constant time only spares readers the question.
func (p KeyPin) Equal(o KeyPin) bool { return subtle.ConstantTimeCompare(p[:], o[:]) == 1 }

// MarshalText encodes the pin as standard base64, as HPKP and curl's --pinnedpubkey spell pins.
func (p KeyPin) MarshalText() ([]byte, error) {
	return base64.StdEncoding.AppendEncode(nil, p[:]), nil
}

// UnmarshalText accepts exactly KeyPinSize bytes of standard base64.
func (p *KeyPin) UnmarshalText(b []byte) error {
	raw, err := base64.StdEncoding.AppendDecode(nil, b)
	if err != nil {
		return fmt.Errorf("key pin: %w", err)
	}
	if len(raw) != KeyPinSize {
		return fmt.Errorf("key pin is %d bytes, want %d: %w", len(raw), KeyPinSize, ErrMalformed)
	}
	copy(p[:], raw)
	return nil
}

func (p KeyPin) String() string { return "sha256/" + base64.StdEncoding.EncodeToString(p[:]) }

// DataKey is an attachment's TLS identity for its data connections: an Ed25519 key made for the
// session and a self-signed certificate, both only in memory. Nothing checks the certificate's names
// or dates; the pin is the whole trust.
type DataKey struct {
	cert tls.Certificate
	pin  KeyPin
}

// NewDataKey makes a key pair and its certificate.
func NewDataKey() (*DataKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("data key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "trafficlab-agent"},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, fmt.Errorf("data key certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("data key certificate: %w", err)
	}
	return &DataKey{cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}, pin: PinOf(leaf)}, nil
}

// Pin is what the Welcome carries.
func (k *DataKey) Pin() KeyPin { return k.pin }

// ClientTunnel is the plugin's half of a data connection: the clear preamble, TLS 1.3 with the
// agent's key checked against pin, the secret inside TLS, the agent's verdict, then the yamux client.
// ctx bounds the handshake only. On error conn is closed.
func ClientTunnel(ctx context.Context, conn io.ReadWriteCloser, pin KeyPin, secret Secret, cfg MuxConfig) (*Mux, error) {
	// Port-forward streams have no deadlines: closing is the only way to unblock a stuck handshake.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	m, err := clientTunnel(conn, pin, secret, cfg)
	if !stop() && err == nil {
		m.Close()
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		if ctx.Err() != nil && !errors.Is(err, ErrKeyPin) && !errors.Is(err, ErrProtocolMismatch) {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, err
	}
	return m, nil
}

func clientTunnel(conn io.ReadWriteCloser, pin KeyPin, secret Secret, cfg MuxConfig) (*Mux, error) {
	if pin.IsZero() {
		return nil, fmt.Errorf("no key pin for the data connection: %w", ErrKeyPin)
	}
	if _, err := conn.Write(AppendPreamble(make([]byte, 0, PreambleSize), Protocol)); err != nil {
		return nil, fmt.Errorf("write data preamble: %w", err)
	}
	b := newBatcher(conn)
	sniff := &clearAnswer{r: conn}
	tc := tls.Client(&batchedConn{b: b, r: sniff}, &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The pin is the verification: the agent's certificate is self-signed, made for this session,
		// and its key is known only through the exec channel. VerifyConnection runs all the same.
		InsecureSkipVerify: true,
		ServerName:         "trafficlab-agent",
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("agent sent no certificate: %w", ErrKeyPin)
			}
			if got := PinOf(cs.PeerCertificates[0]); !got.Equal(pin) {
				return fmt.Errorf("agent's key is %s, its Welcome pinned %s: %w", got, pin, ErrKeyPin)
			}
			return nil
		},
	})
	fail := func(err error) (*Mux, error) {
		tc.Close()
		return nil, err
	}
	if err := tc.Handshake(); err != nil {
		if sniff.err != nil {
			return fail(sniff.err)
		}
		return fail(fmt.Errorf("data connection TLS handshake: %w", err))
	}
	if _, err := tc.Write(secret[:]); err != nil {
		return fail(fmt.Errorf("write data connection secret: %w", err))
	}
	proto, code, err := ReadPreambleAck(tc)
	if err != nil {
		return fail(err)
	}
	if err := ackError(proto, code); err != nil {
		return fail(err)
	}
	m, err := yamux.Client(newCoalescer(tc), cfg.yamux())
	if err != nil {
		return fail(fmt.Errorf("start tunnel client: %w", err))
	}
	return newMux(m, b, cfg), nil
}

// clearAnswer reads the agent's bytes for TLS, except an answer in clear (a protocol mismatch
// refused before TLS), which it turns into the error it means. TLS records never start with "T".
type clearAnswer struct {
	r       io.Reader
	checked bool
	err     error
}

func (c *clearAnswer) Read(p []byte) (int, error) {
	if !c.checked {
		c.checked = true
		var b [4]byte
		n, err := io.ReadFull(c.r, b[:])
		if n == len(b) && string(b[:]) == PreambleAckMagic {
			proto, code, aerr := ReadPreambleAck(io.MultiReader(bytes.NewReader(b[:]), c.r))
			if aerr == nil {
				aerr = ackError(proto, code)
			}
			if aerr == nil {
				aerr = fmt.Errorf("agent answered ok before TLS: %w", ErrBadMagic)
			}
			c.err = aerr
			return 0, aerr
		}
		c.r = io.MultiReader(bytes.NewReader(b[:n]), c.r)
		if n == 0 && err != nil {
			return 0, err
		}
	}
	return c.r.Read(p)
}

// DataServer is the agent's half of the data-connection handshake.
type DataServer struct {
	Key    *DataKey
	Secret Secret
	// Admit is called once a connection has shown the secret, before the agent answers it; an error
	// refuses the connection. The attachment caps its data connections there.
	Admit func() error
	// Timeout bounds the whole handshake, or an unauthenticated peer could hold the connection open.
	Timeout time.Duration
	Mux     MuxConfig
}

// Accept runs the handshake on conn and starts the agent's end of its mux. On error conn is closed.
func (d *DataServer) Accept(conn net.Conn) (*Mux, error) {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	m, err := d.accept(conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return m, nil
}

func (d *DataServer) accept(conn net.Conn) (*Mux, error) {
	proto, err := ReadPreamble(conn)
	if err != nil {
		return nil, err
	}
	if proto != Protocol {
		_, _ = conn.Write(AppendPreambleAck(make([]byte, 0, PreambleAckSize), CodeProtocolMismatch))
		return nil, &MismatchError{Local: RoleAgent, LocalProtocol: Protocol, RemoteProtocol: proto}
	}
	if d.Key == nil || d.Secret.IsZero() {
		return nil, fmt.Errorf("data server without a key or secret: %w", ErrInternal)
	}
	b := newBatcher(conn)
	tc := tls.Server(&batchedConn{b: b, r: conn}, &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{d.Key.cert},
	})
	fail := func(err error) (*Mux, error) {
		tc.Close()
		return nil, err
	}
	if err := tc.Handshake(); err != nil {
		return fail(fmt.Errorf("data connection TLS handshake: %w", err))
	}
	var got Secret
	if _, err := io.ReadFull(tc, got[:]); err != nil {
		return fail(fmt.Errorf("read data connection secret: %w", err))
	}
	var verr error
	if !got.Equal(d.Secret) {
		verr = ErrBadSecret
	} else if d.Admit != nil {
		verr = d.Admit()
	}
	if _, err := tc.Write(AppendPreambleAck(make([]byte, 0, PreambleAckSize), CodeFor(verr))); err != nil && verr == nil {
		verr = fmt.Errorf("write data preamble answer: %w", err)
	}
	if verr != nil {
		return fail(verr)
	}
	m, err := yamux.Server(newCoalescer(tc), d.Mux.yamux())
	if err != nil {
		return fail(fmt.Errorf("start tunnel server: %w", err))
	}
	return newMux(m, b, d.Mux), nil
}

// batchedConn is what TLS runs on: reads straight from the connection, writes through the batcher,
// so that the records of one large write (TLS writes each record on its own) still cross the
// port-forward chain as a few large messages. Deadlines are the caller's, on the connection itself.
type batchedConn struct {
	b *batcher
	r io.Reader
}

func (c *batchedConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *batchedConn) Write(p []byte) (int, error)      { return c.b.Write(p) }
func (c *batchedConn) Close() error                     { return c.b.Close() }
func (c *batchedConn) LocalAddr() net.Addr              { return dataAddr{} }
func (c *batchedConn) RemoteAddr() net.Addr             { return dataAddr{} }
func (c *batchedConn) SetDeadline(time.Time) error      { return nil }
func (c *batchedConn) SetReadDeadline(time.Time) error  { return nil }
func (c *batchedConn) SetWriteDeadline(time.Time) error { return nil }

type dataAddr struct{}

func (dataAddr) Network() string { return "trafficlab-data" }
func (dataAddr) String() string  { return "trafficlab-data" }
