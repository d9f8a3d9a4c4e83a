package main

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestEchoReportsBodyHash(t *testing.T) {
	srv := httptest.NewServer(echo("pod-a"))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/sink?x=1", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r reply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("hello"))
	if r.Pod != "pod-a" || r.Method != "POST" || r.Path != "/sink" || r.Query != "x=1" ||
		r.BodyBytes != 5 || r.BodySHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("reply %+v", r)
	}
}

func TestBytesDeterministicWithTrailer(t *testing.T) {
	srv := httptest.NewServer(bytesHandler("pod-a"))
	defer srv.Close()
	get := func(q string) ([]byte, string) {
		resp, err := http.Get(srv.URL + "/bytes?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return b, resp.Trailer.Get("X-Body-Sha256")
	}
	a, trailer := get("n=1000003")
	b, _ := get("n=1000003&seed=1")
	c, _ := get("n=1000003&seed=2")
	sum := sha256.Sum256(a)
	if len(a) != 1000003 || string(a) != string(b) || string(a) == string(c) {
		t.Errorf("len %d, same seed equal %v, other seed equal %v", len(a), string(a) == string(b), string(a) == string(c))
	}
	if trailer != hex.EncodeToString(sum[:]) {
		t.Errorf("trailer %q, want sha256 of the body %x", trailer, sum)
	}
}

// TestSelfSignedServes: the HTTPS listener's certificate makes a working server for clients that do
// not verify it, as the kubelet's HTTPS probes do not.
func TestSelfSignedServes(t *testing.T) {
	cert, err := selfSigned("pod-a")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.URL.Path)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := c.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.TLS == nil || resp.TLS.PeerCertificates[0].Subject.CommonName != "pod-a" || string(b) != "/healthz" {
		t.Errorf("TLS %v, body %q", resp.TLS != nil, b)
	}
}
