// Command echo is the trafficlab HTTP test peer. On one port it speaks HTTP/1.1 with
// keep-alive and HTTP/2 cleartext (h2c with prior knowledge, via net/http's Protocols; the
// x/net h2c package is deprecated and would add only the Upgrade dance), and serves:
//
//	/            JSON description of the request: method, path, headers, body sha256, pod
//	/sink        same as /, meant for large POST bodies (the body is hashed, never stored)
//	/bytes?n=N   N pseudo-random bytes (seed=S picks the stream, default 1); the sha256 of
//	             what was sent follows in the X-Body-Sha256 trailer
//	/healthz     200 "ok", and a log line naming the client and its User-Agent (probe tests
//	             read the container log to see which probes reached the app)
//
// With -tls-addr it serves the same over HTTPS (HTTP/1.1) too, with a self-signed certificate made
// at start: the kubelet's HTTPS probes do not verify it.
//
// Usage: peer-echo [-addr :8080] [-tls-addr :8443]   (or ECHO_ADDR, ECHO_TLS_ADDR)
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"time"
)

type reply struct {
	Pod        string              `json:"pod"`
	Method     string              `json:"method"`
	Path       string              `json:"path"`
	Query      string              `json:"query,omitempty"`
	Proto      string              `json:"proto"`
	Host       string              `json:"host"`
	RemoteAddr string              `json:"remoteAddr"`
	Headers    map[string][]string `json:"headers"`
	BodyBytes  int64               `json:"bodyBytes"`
	BodySHA256 string              `json:"bodySha256"`
}

func podName() string {
	if p := os.Getenv("POD_NAME"); p != "" {
		return p
	}
	h, _ := os.Hostname()
	return h
}

func echo(pod string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, fmt.Sprintf("read body: %v", err), http.StatusBadRequest)
			return
		}
		rep := reply{
			Pod: pod, Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Proto: r.Proto,
			Host: r.Host, RemoteAddr: r.RemoteAddr, Headers: r.Header,
			BodyBytes: n, BodySHA256: hex.EncodeToString(h.Sum(nil)),
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Pod", pod)
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			log.Printf("write reply to %s: %v", r.RemoteAddr, err)
		}
	}
}

// randReader is a deterministic stream so clients can recompute what they should get.
type randReader struct{ src *rand.ChaCha8 }

func (r randReader) Read(p []byte) (int, error) { return r.src.Read(p) }

func bytesHandler(pod string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "want ?n=<non-negative byte count>", http.StatusBadRequest)
			return
		}
		seed, _ := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
		if seed == 0 {
			seed = 1
		}
		var key [32]byte
		for i := 0; i < 8; i++ {
			key[i] = byte(seed >> (8 * i))
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("X-Pod", pod)
		w.Header().Set("X-Bytes", strconv.FormatInt(n, 10))
		w.Header().Set("Trailer", "X-Body-Sha256")
		h := sha256.New()
		start := time.Now()
		sent, err := io.CopyBuffer(io.MultiWriter(w, h), io.LimitReader(randReader{rand.NewChaCha8(key)}, n), make([]byte, 256<<10))
		if err != nil {
			log.Printf("bytes to %s: sent %d of %d: %v", r.RemoteAddr, sent, n, err)
			return
		}
		w.Header().Set("X-Body-Sha256", hex.EncodeToString(h.Sum(nil)))
		log.Printf("bytes to %s: %d in %s", r.RemoteAddr, sent, time.Since(start).Round(time.Millisecond))
	}
}

// jsonChunk is about 1 MiB of JSON records shaped like an API list response (repetitive keys, varying
// values), made once: benchmarks measure the path, not this server's formatting speed.
func jsonChunk() []byte {
	phases := [...]string{"Running", "Pending", "Succeeded"}
	var b bytes.Buffer
	for i := 0; b.Len() < 1<<20; i++ {
		fmt.Fprintf(&b, `{"metadata":{"name":"web-%d-%x","namespace":"shop","uid":"%08x-%04x-4000-8000-%012x","resourceVersion":"%d","labels":{"app":"web","tier":"frontend","pod-template-hash":"%x"}},"spec":{"nodeName":"node-%d","containers":[{"name":"app","image":"registry.example/shop/web:v1.%d.0","ports":[{"containerPort":8080,"protocol":"TCP"}]}]},"status":{"phase":"%s","podIP":"10.88.%d.%d","startTime":"2026-11-23T01:%02d:%02dZ","restartCount":%d}},`,
			i, i*2654435761%1000003, i*7919, i%65536, i*104729, 100000+i, i%4096, i%16, i%40, phases[i%3], (i/250)%250, i%250, (i/60)%60, i%60, i%7)
	}
	return b.Bytes()
}

// jsonHandler streams about n bytes of a JSON list (the chunk repeated), valid as a whole document.
func jsonHandler(pod string, chunk []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "want ?n=<non-negative byte count>", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Pod", pod)
		if _, err := io.WriteString(w, `{"kind":"List","items":[`); err != nil {
			return
		}
		for written := int64(0); written < n; written += int64(len(chunk)) {
			if _, err := w.Write(chunk); err != nil {
				log.Printf("json to %s: %v", r.RemoteAddr, err)
				return
			}
		}
		// The chunk ends with a comma; close the list with one more record.
		_, _ = io.WriteString(w, `{"metadata":{"name":"last"}}]}`+"\n")
	}
}

func main() {
	def := os.Getenv("ECHO_ADDR")
	if def == "" {
		def = ":8080"
	}
	addr := flag.String("addr", def, "listen address")
	tlsAddr := flag.String("tls-addr", os.Getenv("ECHO_TLS_ADDR"), "HTTPS listen address (empty: none)")
	flag.Parse()
	pod := podName()
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		log.Printf("healthz %s from %s user-agent %q", scheme, r.RemoteAddr, r.UserAgent())
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/bytes", bytesHandler(pod))
	mux.HandleFunc("/json", jsonHandler(pod, jsonChunk()))
	mux.HandleFunc("/sink", echo(pod))
	mux.HandleFunc("/", echo(pod))
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true) // h2c with prior knowledge on the same port
	srv := &http.Server{Addr: *addr, Handler: mux, Protocols: &protos, ReadHeaderTimeout: 30 * time.Second}
	if *tlsAddr != "" {
		cert, err := selfSigned(pod)
		if err != nil {
			log.Fatal(err)
		}
		tsrv := &http.Server{Addr: *tlsAddr, Handler: mux, ReadHeaderTimeout: 30 * time.Second, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
		log.Printf("peer-echo %s listening on %s (https)", pod, *tlsAddr)
		go func() { log.Fatal(tsrv.ListenAndServeTLS("", "")) }()
	}
	log.Printf("peer-echo %s listening on %s (http/1.1 + h2c)", pod, *addr)
	log.Fatal(srv.ListenAndServe())
}

// selfSigned is a certificate for name, made now, for a server whose clients do not verify it.
func selfSigned(name string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("make a TLS key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("make a TLS certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
