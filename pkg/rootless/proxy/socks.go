package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"

	"k8s.io/klog/v2"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// SOCKS5 (RFC 1928) as far as this proxy serves it: no authentication, CONNECT only. BIND and UDP
// ASSOCIATE are answered "command not supported": UDP goes through the pod with the network namespace
// of `exec`, not with --proxy.
const (
	socksVersion = 5

	methodNoAuth       = 0x00
	methodNoAcceptable = 0xff

	cmdConnect = 1

	atypIPv4   = 1
	atypDomain = 3
	atypIPv6   = 4

	repSucceeded               = 0
	repGeneralFailure          = 1
	repNotAllowed              = 2
	repHostUnreachable         = 4
	repConnectionRefused       = 5
	repCommandNotSupported     = 7
	repAddressTypeNotSupported = 8
)

// socksRequest is a client's request (RFC 1928 section 4).
type socksRequest struct {
	Cmd byte
	// Host is an IP literal (ATYP 1 or 4, without brackets) or a name (ATYP 3), which the pod resolves.
	Host string
	Port uint16
}

func (q socksRequest) address() string {
	return net.JoinHostPort(q.Host, strconv.Itoa(int(q.Port)))
}

// socksError is a request that cannot be served, with the reply it gets; code 0 closes the
// connection without one (not SOCKS5, or cut short).
type socksError struct {
	code byte
	msg  string
}

func (e *socksError) Error() string { return e.msg }

// readGreeting reads the version identifier/method selection message and returns the methods.
func readGreeting(r io.Reader) ([]byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, &socksError{msg: "greeting cut short"}
	}
	if h[0] != socksVersion {
		return nil, &socksError{msg: fmt.Sprintf("SOCKS version %d, want 5", h[0])}
	}
	methods := make([]byte, h[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return nil, &socksError{msg: "greeting cut short"}
	}
	return methods, nil
}

// readRequest reads one request; the reserved byte is not checked, as clients are not strict about it.
func readRequest(r io.Reader) (socksRequest, error) {
	short := &socksError{msg: "request cut short"}
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return socksRequest{}, short
	}
	if h[0] != socksVersion {
		return socksRequest{}, &socksError{msg: fmt.Sprintf("SOCKS version %d, want 5", h[0])}
	}
	q := socksRequest{Cmd: h[1]}
	switch h[3] {
	case atypIPv4, atypIPv6:
		b := make([]byte, 4)
		if h[3] == atypIPv6 {
			b = make([]byte, 16)
		}
		if _, err := io.ReadFull(r, b); err != nil {
			return socksRequest{}, short
		}
		a, _ := netip.AddrFromSlice(b)
		q.Host = a.Unmap().String()
	case atypDomain:
		var n [1]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return socksRequest{}, short
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(r, name); err != nil {
			return socksRequest{}, short
		}
		if len(name) == 0 {
			return socksRequest{}, &socksError{code: repGeneralFailure, msg: "empty domain name"}
		}
		// Names go to a resolver, into "host:port" and into log lines: host name characters only (IDNs
		// come as punycode), or an IP literal some clients send as a name. Not one with a zone: netip
		// takes any bytes after '%', ']' and ':' among them, and a zone means nothing in the pod.
		if a, err := netip.ParseAddr(string(name)); (err != nil || a.Zone() != "") && !isHostName(name) {
			return socksRequest{}, &socksError{code: repGeneralFailure, msg: fmt.Sprintf("domain name %q is not a host name", name)}
		}
		q.Host = string(name)
	default:
		// The address's length is unknown, so nothing after it can be read: reply and close.
		return socksRequest{}, &socksError{code: repAddressTypeNotSupported, msg: fmt.Sprintf("address type %d", h[3])}
	}
	var p [2]byte
	if _, err := io.ReadFull(r, p[:]); err != nil {
		return socksRequest{}, short
	}
	q.Port = binary.BigEndian.Uint16(p[:])
	return q, nil
}

func isHostName(name []byte) bool {
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// appendReply encodes a reply; bound is the address the destination sees, when the dialer knows it
// (a pod dial does not: 0.0.0.0:0, which clients ignore).
func appendReply(b []byte, code byte, bound net.Addr) []byte {
	addr, port := netip.IPv4Unspecified(), 0
	if ta, ok := bound.(*net.TCPAddr); ok {
		if a, ok := netip.AddrFromSlice(ta.IP); ok {
			addr, port = a.Unmap(), ta.Port
		}
	}
	b = append(b, socksVersion, code, 0)
	if addr.Is4() {
		b = append(b, atypIPv4)
	} else {
		b = append(b, atypIPv6)
	}
	b = append(b, addr.AsSlice()...)
	return binary.BigEndian.AppendUint16(b, uint16(port))
}

// socksCode turns a dial failure into the closest reply code, so clients print "connection refused"
// or "host unreachable" rather than "general failure".
func socksCode(err error) byte {
	switch wire.CodeFor(err) {
	case wire.CodeRefused:
		return repConnectionRefused
	case wire.CodeUnknownHost, wire.CodeUnreachable, wire.CodeTimeout:
		return repHostUnreachable
	case wire.CodeForbidden:
		return repNotAllowed
	}
	return repGeneralFailure
}

// serveSOCKS runs one SOCKS5 connection: handshake, dial, then the tunnel.
func (st *serving) serveSOCKS(c *peekedConn) {
	fail := func(code byte, err error) {
		klog.V(2).InfoS("proxy: SOCKS request refused", "from", c.RemoteAddr(), "code", code, "err", err)
		if code != 0 {
			_, _ = c.Write(appendReply(nil, code, nil))
		}
	}
	methods, err := readGreeting(c)
	if err != nil {
		fail(0, err)
		return
	}
	if !bytes.Contains(methods, []byte{methodNoAuth}) {
		_, _ = c.Write([]byte{socksVersion, methodNoAcceptable})
		fail(0, errors.New("the client offers no method without authentication"))
		return
	}
	if _, err := c.Write([]byte{socksVersion, methodNoAuth}); err != nil {
		return
	}
	q, err := readRequest(c)
	if err != nil {
		var se *socksError
		if errors.As(err, &se) {
			fail(se.code, err)
		}
		return
	}
	if q.Cmd != cmdConnect {
		fail(repCommandNotSupported, fmt.Errorf("command %d: only CONNECT is served", q.Cmd))
		return
	}
	dest, err := st.dial(st.ctx, q.address())
	if err != nil {
		fail(socksCode(err), err)
		return
	}
	if _, err := c.Write(appendReply(nil, repSucceeded, dest.LocalAddr())); err != nil {
		dest.Close()
		return
	}
	st.tunnel(c, dest)
}
