package transport

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// PortForward is one upgraded port-forward connection to a pod. Each Open is a new TCP connection from
// the kubelet's runtime to 127.0.0.1:Port inside the pod's network namespace, which is why the agent can
// listen on loopback only and open no port on the pod IP.
type PortForward struct {
	conn     httpstream.Connection
	port     int
	protocol Protocol
	nextID   atomic.Int64
}

// PortForwardRequest names the pod port to reach.
type PortForwardRequest struct {
	Namespace string
	Pod       string
	Port      int
	Protocol  Protocol
}

// DialPortForward upgrades one connection to the pod's port-forward subresource. SPDY is tried first
// under ProtocolAuto because it measured faster and data is what this path is for; WebSocket is used
// when the upgrade is refused (proxies that only pass WebSocket).
func DialPortForward(ctx context.Context, config *rest.Config, client rest.Interface, req PortForwardRequest) (*PortForward, error) {
	if req.Port < 1 || req.Port > 65535 {
		return nil, fmt.Errorf("port %d is out of range 1-65535", req.Port)
	}
	u := client.Post().Resource("pods").Namespace(req.Namespace).Name(req.Pod).SubResource("portforward").URL()
	type result struct {
		conn     httpstream.Connection
		protocol Protocol
		err      error
	}
	done := make(chan result, 1)
	go func() {
		conn, p, err := dialPortForward(config, u, req.Protocol)
		done <- result{conn, p, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("port-forward to %s/%s: %w", req.Namespace, req.Pod, r.err)
		}
		return &PortForward{conn: r.conn, port: req.Port, protocol: r.protocol}, nil
	case <-ctx.Done():
		// The dialers take no context; close whatever arrives late so no upgraded connection leaks.
		go func() {
			if r := <-done; r.conn != nil {
				r.conn.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

func dialPortForward(config *rest.Config, u *url.URL, p Protocol) (httpstream.Connection, Protocol, error) {
	dialSPDY := func() (httpstream.Connection, Protocol, error) {
		rt, upgrader, err := spdyRoundTripperFor(config)
		if err != nil {
			return nil, "", fmt.Errorf("creating spdy round tripper: %w", err)
		}
		conn, _, err := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u).Dial(portforward.PortForwardProtocolV1Name)
		return conn, ProtocolSPDY, err
	}
	dialWS := func() (httpstream.Connection, Protocol, error) {
		d, err := portforward.NewSPDYOverWebsocketDialer(u, config)
		if err != nil {
			return nil, "", fmt.Errorf("creating websocket dialer: %w", err)
		}
		conn, _, err := d.Dial(portforward.PortForwardProtocolV1Name)
		return conn, ProtocolWebSocket, err
	}
	switch p {
	case ProtocolSPDY:
		return dialSPDY()
	case ProtocolWebSocket:
		return dialWS()
	}
	conn, got, err := dialSPDY()
	if err != nil && spdyRefused(err) {
		wconn, wgot, werr := dialWS()
		if werr != nil {
			return nil, "", fmt.Errorf("%w (websocket: %w)", err, werr)
		}
		return wconn, wgot, nil
	}
	return conn, got, err
}

// Protocol reports which upgrade the connection uses.
func (f *PortForward) Protocol() Protocol { return f.protocol }

// Done is closed when the upgraded connection to the apiserver is gone.
func (f *PortForward) Done() <-chan bool { return f.conn.CloseChan() }

// Close ends every stream of this connection.
func (f *PortForward) Close() error { return f.conn.Close() }

// Open starts a new connection to the pod port. The kubelet reports a failed dial inside the pod on a
// separate error stream; it surfaces as the error of the next Read.
func (f *PortForward) Open() (*Stream, error) {
	id := strconv.FormatInt(f.nextID.Add(1), 10)
	headers := http.Header{}
	headers.Set(corev1.StreamType, corev1.StreamTypeError)
	headers.Set(corev1.PortHeader, strconv.Itoa(f.port))
	headers.Set(corev1.PortForwardRequestIDHeader, id)
	errStream, err := f.conn.CreateStream(headers)
	if err != nil {
		return nil, fmt.Errorf("creating port-forward error stream: %w", err)
	}
	// Nothing is written to the error stream; closing our half tells the kubelet so.
	_ = errStream.Close()
	headers.Set(corev1.StreamType, corev1.StreamTypeData)
	data, err := f.conn.CreateStream(headers)
	if err != nil {
		f.conn.RemoveStreams(errStream)
		return nil, fmt.Errorf("creating port-forward data stream: %w", err)
	}
	s := &Stream{pf: f, data: data, errStream: errStream, remoteErr: make(chan struct{})}
	go s.watchErrors()
	return s, nil
}

// Stream is one forwarded connection: an io.ReadWriteCloser with half-close, which is all the stream
// multiplexer above it needs (the underlying SPDY/WebSocket stream has no deadlines).
type Stream struct {
	pf        *PortForward
	data      httpstream.Stream
	errStream httpstream.Stream

	remoteErr chan struct{}
	errMu     sync.Mutex
	err       error
	closeOnce sync.Once
}

func (s *Stream) watchErrors() {
	msg, err := io.ReadAll(s.errStream)
	s.errMu.Lock()
	switch {
	case err != nil:
		s.err = fmt.Errorf("reading port-forward error stream: %w", err)
	case len(msg) > 0:
		s.err = fmt.Errorf("port-forward to port %d: %s", s.pf.port, msg)
	}
	s.errMu.Unlock()
	close(s.remoteErr)
}

// remoteError returns what the kubelet reported, if it has reported it yet.
func (s *Stream) remoteError() error {
	select {
	case <-s.remoteErr:
		s.errMu.Lock()
		defer s.errMu.Unlock()
		return s.err
	default:
		return nil
	}
}

func (s *Stream) Read(p []byte) (int, error) {
	n, err := s.data.Read(p)
	if err != nil {
		if rerr := s.remoteError(); rerr != nil {
			return n, rerr
		}
	}
	return n, err
}

func (s *Stream) Write(p []byte) (int, error) {
	n, err := s.data.Write(p)
	if err != nil {
		if rerr := s.remoteError(); rerr != nil {
			return n, rerr
		}
	}
	return n, err
}

// CloseWrite half-closes: the pod side reads EOF and may still answer.
func (s *Stream) CloseWrite() error { return s.data.Close() }

// Close discards what is unsent and releases both streams.
func (s *Stream) Close() error {
	s.closeOnce.Do(func() {
		_ = s.data.Reset()
		s.pf.conn.RemoveStreams(s.data, s.errStream)
	})
	return nil
}

// Err waits briefly for the kubelet's verdict on this connection, e.g. a refused dial inside the pod.
func (s *Stream) Err(wait time.Duration) error {
	select {
	case <-s.remoteErr:
	case <-time.After(wait):
	}
	return s.remoteError()
}
