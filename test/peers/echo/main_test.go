package main

import (
	"crypto/sha256"
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
