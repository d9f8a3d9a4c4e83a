package proxy

import (
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"time"

	"k8s.io/klog/v2"
)

// viaName is this proxy in Via headers (RFC 9110 section 7.6.3).
const viaName = "kubectl-trafficlab"

// ServeHTTP is the HTTP proxy: CONNECT tunnels, and absolute-URI requests forwarded with keep-alive
// on both sides and hop-by-hop headers removed (httputil.ReverseProxy does the RFC 9110 part).
func (st *serving) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !st.enter() {
		httpError(w, http.StatusServiceUnavailable, "kubectl-trafficlab proxy: shutting down")
		return
	}
	defer st.handlers.Done()
	switch {
	case r.Method == http.MethodConnect:
		st.connect(w, r)
	case r.URL.IsAbs() && r.URL.Host != "":
		st.forward(w, r)
	default:
		httpError(w, http.StatusBadRequest, "kubectl-trafficlab proxy: want CONNECT host:port or an absolute URI (http://host/path)")
	}
}

func (st *serving) connect(w http.ResponseWriter, r *http.Request) {
	if _, _, err := net.SplitHostPort(r.Host); err != nil {
		httpError(w, http.StatusBadRequest, fmt.Sprintf("kubectl-trafficlab proxy: CONNECT wants host:port, got %q", r.Host))
		return
	}
	dest, err := st.dial(r.Context(), r.Host)
	if err != nil {
		dialFailed(w, err)
		return
	}
	rc := http.NewResponseController(w)
	conn, brw, err := rc.Hijack()
	if err != nil {
		dest.Close()
		httpError(w, http.StatusInternalServerError, "kubectl-trafficlab proxy: "+err.Error())
		return
	}
	// What the HTTP server read ahead (a TLS ClientHello sent before our answer) comes first.
	client := &peekedConn{Conn: conn, r: brw.Reader}
	if !st.track(conn) {
		conn.Close()
		dest.Close()
		return
	}
	defer st.untrack(conn)
	_ = conn.SetDeadline(time.Now().Add(handshakeTimeout))
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		conn.Close()
		dest.Close()
		return
	}
	st.tunnel(client, dest)
}

func (st *serving) forward(w http.ResponseWriter, r *http.Request) {
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// The URL stays absolute, so the Transport dials its host as the client named it. A forward
			// proxy passes the client's X-Forwarded-* on untouched; Rewrite starts without them.
			for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				if v, ok := pr.In.Header[h]; ok {
					pr.Out.Header[h] = v
				}
			}
			pr.Out.Header.Add("Via", fmt.Sprintf("%d.%d %s", r.ProtoMajor, r.ProtoMinor, viaName))
		},
		Transport: st.transport,
		// Streaming responses (server-sent events, long polls) reach the client as they come.
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Add("Via", fmt.Sprintf("%d.%d %s", resp.ProtoMajor, resp.ProtoMinor, viaName))
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) { dialFailed(w, err) },
		ErrorLog:     log.New(klogWriter{}, "", 0),
	}
	rp.ServeHTTP(w, r)
}

// dialFailed answers 502 (504 for a timeout) with a one-line reason.
func dialFailed(w http.ResponseWriter, err error) {
	status := http.StatusBadGateway
	if isTimeout(err) {
		status = http.StatusGatewayTimeout
	}
	msg := err.Error()
	var de *dialError
	if !errors.As(err, &de) {
		msg = "upstream: " + msg
	}
	klog.V(2).InfoS("proxy: request failed", "status", status, "err", err)
	httpError(w, status, "kubectl-trafficlab proxy: "+msg)
}

func httpError(w http.ResponseWriter, status int, msg string) {
	http.Error(w, oneLine(msg), status)
}

// oneLine keeps a reason on one line whatever an error message holds.
func oneLine(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\n' || c == '\r' {
			b[i] = ' '
		}
	}
	return string(b)
}
