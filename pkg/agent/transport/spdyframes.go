package transport

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/httpstream"
	apispdy "k8s.io/apimachinery/pkg/util/httpstream/spdy"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport/spdy"
)

// spdyPingPeriod is what client-go's spdy.RoundTripperFor uses: pings keep idle proxies from
// closing the connection.
const spdyPingPeriod = 5 * time.Second

// spdyRoundTripperFor is client-go's spdy.RoundTripperFor with one change: the upgraded connection
// gets each SPDY frame in one write (frameConn). spdystream's framer writes a data frame as three
// writes to the connection (stream id, flags and length, data), and on a TLS connection each is a
// record the apiserver relays to the kubelet, and the kubelet to the runtime, as a message of its own.
func spdyRoundTripperFor(config *rest.Config) (http.RoundTripper, spdy.Upgrader, error) {
	tlsConfig, err := rest.TLSConfigFor(config)
	if err != nil {
		return nil, nil, err
	}
	proxy := http.ProxyFromEnvironment
	if config.Proxy != nil {
		proxy = config.Proxy
	}
	inner, err := apispdy.NewRoundTripperWithConfig(apispdy.RoundTripperConfig{
		TLS: tlsConfig, Proxier: proxy, PingPeriod: spdyPingPeriod,
	})
	if err != nil {
		return nil, nil, err
	}
	up := &frameUpgrader{inner: inner}
	wrapped, err := rest.HTTPWrappersForConfig(config, up)
	if err != nil {
		return nil, nil, err
	}
	return wrapped, up, nil
}

// frameUpgrader does what apispdy.SpdyRoundTripper's RoundTrip and NewConnection do, dialing (and
// proxying) through it, and hands the connection to spdystream behind a frameConn.
type frameUpgrader struct {
	inner *apispdy.SpdyRoundTripper
	conn  net.Conn
}

func (u *frameUpgrader) RoundTrip(req *http.Request) (*http.Response, error) {
	req = utilnet.CloneRequest(req)
	req.Header.Add(httpstream.HeaderConnection, httpstream.HeaderUpgrade)
	req.Header.Add(httpstream.HeaderUpgrade, apispdy.HeaderSpdy31)
	conn, err := u.inner.Dial(req)
	if err != nil {
		return nil, err
	}
	// The server sends nothing after its 101 until the client opens a stream, so nothing past the
	// response is left in this reader (client-go reads the response the same way).
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	u.conn = conn
	return resp, nil
}

func (u *frameUpgrader) NewConnection(resp *http.Response) (httpstream.Connection, error) {
	upgraded := resp.StatusCode == http.StatusSwitchingProtocols &&
		strings.Contains(strings.ToLower(resp.Header.Get(httpstream.HeaderConnection)), strings.ToLower(httpstream.HeaderUpgrade)) &&
		strings.Contains(strings.ToLower(resp.Header.Get(httpstream.HeaderUpgrade)), strings.ToLower(apispdy.HeaderSpdy31))
	if !upgraded || u.conn == nil {
		if u.conn != nil {
			u.conn.Close()
		}
		// client-go's own turns the refusal into the apiserver's Status error.
		return u.inner.NewConnection(resp)
	}
	return apispdy.NewClientConnectionWithPings(&frameConn{Conn: u.conn}, spdyPingPeriod)
}

// spdyHeaderLen is the length of every SPDY/3.1 frame header; its last three bytes are the length of
// what follows, in control frames and data frames alike.
const spdyHeaderLen = 8

// frameConn holds what the framer writes until a frame is complete and writes whole frames only.
// spdystream writes one frame at a time under its own lock, so a frame is always completed by the
// writes that follow its start; nothing waits for more than the rest of its own frame.
type frameConn struct {
	net.Conn
	mu  sync.Mutex
	buf []byte
}

func (c *frameConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil // the framer writes an empty frame's empty data
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.buf) == 0 && completeFrames(p) == len(p) {
		if _, err := c.Conn.Write(p); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	c.buf = append(c.buf, p...)
	n := completeFrames(c.buf)
	if n == 0 {
		return len(p), nil
	}
	_, err := c.Conn.Write(c.buf[:n])
	rest := copy(c.buf, c.buf[n:])
	c.buf = c.buf[:rest]
	if len(c.buf) == 0 && cap(c.buf) > 64<<10 {
		c.buf = nil // a large data frame's buffer is not kept for the small ones that follow
	}
	if err != nil {
		return 0, fmt.Errorf("write spdy frames: %w", err)
	}
	return len(p), nil
}

// completeFrames is how many leading bytes of b are whole frames.
func completeFrames(b []byte) int {
	n := 0
	for len(b)-n >= spdyHeaderLen {
		size := spdyHeaderLen + (int(b[n+5])<<16 | int(b[n+6])<<8 | int(b[n+7]))
		if len(b)-n < size {
			break
		}
		n += size
	}
	return n
}
