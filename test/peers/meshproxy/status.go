package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// istioAppProbers is the sidecar's environment variable in which Istio's injector lists the app's
// probes it rewrote to the status port: status-port path -> the original probe.
const istioAppProbers = "ISTIO_KUBE_APP_PROBERS"

// appProber is one entry of ISTIO_KUBE_APP_PROBERS (a Kubernetes ProbeHandler plus its timeout).
type appProber struct {
	HTTPGet *struct {
		Path        string          `json:"path"`
		Port        json.RawMessage `json:"port"`
		Scheme      string          `json:"scheme"`
		HTTPHeaders []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"httpHeaders"`
	} `json:"httpGet"`
	TCPSocket *struct {
		Port json.RawMessage `json:"port"`
	} `json:"tcpSocket"`
	TimeoutSeconds int `json:"timeoutSeconds"`
}

// parseAppProbers reads ISTIO_KUBE_APP_PROBERS; empty is none.
func parseAppProbers(v string) (map[string]appProber, error) {
	if v == "" {
		return nil, nil
	}
	var out map[string]appProber
	if err := json.Unmarshal([]byte(v), &out); err != nil {
		return nil, fmt.Errorf("%s: %w", istioAppProbers, err)
	}
	for path, pr := range out {
		var raw json.RawMessage
		switch {
		case pr.HTTPGet != nil:
			raw = pr.HTTPGet.Port
		case pr.TCPSocket != nil:
			raw = pr.TCPSocket.Port
		default:
			return nil, fmt.Errorf("%s: %q has neither httpGet nor tcpSocket", istioAppProbers, path)
		}
		if _, err := probePort(raw); err != nil {
			return nil, fmt.Errorf("%s: %q: %w", istioAppProbers, path, err)
		}
	}
	return out, nil
}

// probePort reads a probe's port; the injector writes numbers for the ports it resolved.
func probePort(raw json.RawMessage) (uint16, error) {
	n, err := strconv.ParseUint(string(raw), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %s: want a port number (named ports are not resolved by this test sidecar)", raw)
	}
	return uint16(n), nil
}

// serveStatus answers the sidecar's health checks on ln: Envoy's and Linkerd's readiness (ready as
// soon as the listeners are), and Istio's app probes, sent to the app as pilot-agent sends them.
func (p *proxy) serveStatus(ctx context.Context, ln net.Listener, probers map[string]appProber) error {
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") }
	for _, path := range []string{"/healthz/ready", "/ready", "/live"} {
		mux.HandleFunc(path, ok)
	}
	mux.HandleFunc("/app-health/", func(w http.ResponseWriter, r *http.Request) {
		pr, found := probers[r.URL.Path]
		if !found {
			http.NotFound(w, r)
			return
		}
		if err := p.probeApp(r.Context(), pr, r.Header); err != nil {
			log.Printf("app probe %s: %v", r.URL.Path, err)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && ctx.Err() == nil {
		return fmt.Errorf("status port %s: %w", ln.Addr(), err)
	}
	return nil
}

// probeApp sends one app probe to podIP:port from 127.0.0.6 (the source pilot-agent's prober binds,
// which Istio's output rules let through on lo) on a new connection, as the kubelet would have; the
// kubelet's own headers (User-Agent kube-probe/...) are passed on, the probe's declared ones win.
func (p *proxy) probeApp(ctx context.Context, pr appProber, kubeletHeader http.Header) error {
	timeout := time.Duration(max(pr.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(istioUpstreamSource(), 0))}
	if pr.TCPSocket != nil {
		port, _ := probePort(pr.TCPSocket.Port)
		c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(p.podIP, port).String())
		if err != nil {
			return err
		}
		return c.Close()
	}
	g := pr.HTTPGet
	port, _ := probePort(g.Port)
	scheme := "http"
	if strings.EqualFold(g.Scheme, "HTTPS") {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+netip.AddrPortFrom(p.podIP, port).String()+g.Path, nil)
	if err != nil {
		return err
	}
	if ua := kubeletHeader.Get("User-Agent"); ua != "" {
		req.Header.Set("User-Agent", ua)
	}
	for _, h := range g.HTTPHeaders {
		req.Header.Set(h.Name, h.Value)
	}
	tr := &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // the kubelet does not verify probe certificates either
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("the app answered %s", resp.Status)
	}
	return nil
}
