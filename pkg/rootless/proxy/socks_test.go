package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/egress"
)

// appendRequest encodes a request the way a client does; names are sent as ATYP 3.
func appendRequest(b []byte, q socksRequest) []byte {
	b = append(b, socksVersion, q.Cmd, 0)
	if a, err := netip.ParseAddr(q.Host); err == nil {
		if a.Is4() {
			b = append(b, atypIPv4)
		} else {
			b = append(b, atypIPv6)
		}
		b = append(b, a.AsSlice()...)
	} else {
		b = append(b, atypDomain, byte(len(q.Host)))
		b = append(b, q.Host...)
	}
	return binary.BigEndian.AppendUint16(b, q.Port)
}

func TestReadRequest(t *testing.T) {
	tests := []struct {
		name     string
		in       []byte
		want     socksRequest
		wantCode byte
		wantErr  string
	}{
		{name: "ipv4", in: []byte{5, 1, 0, 1, 10, 96, 0, 20, 0x1f, 0x90}, want: socksRequest{Cmd: 1, Host: "10.96.0.20", Port: 8080}},
		{name: "ipv6", in: append(append([]byte{5, 1, 0, 4}, net.ParseIP("fd00::1")...), 0, 80), want: socksRequest{Cmd: 1, Host: "fd00::1", Port: 80}},
		{name: "mapped ipv6", in: append(append([]byte{5, 1, 0, 4}, net.ParseIP("10.0.0.1").To16()...), 0, 80), want: socksRequest{Cmd: 1, Host: "10.0.0.1", Port: 80}},
		{name: "name", in: []byte{5, 1, 0, 3, 5, 'r', 'e', 'd', 'i', 's', 0x18, 0xeb}, want: socksRequest{Cmd: 1, Host: "redis", Port: 6379}},
		{name: "udp associate parses", in: []byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}, want: socksRequest{Cmd: 3, Host: "0.0.0.0"}},
		{name: "reserved byte tolerated", in: []byte{5, 1, 7, 1, 1, 2, 3, 4, 0, 1}, want: socksRequest{Cmd: 1, Host: "1.2.3.4", Port: 1}},
		{name: "version", in: []byte{4, 1, 0, 1}, wantErr: "SOCKS version 4, want 5"},
		{name: "short header", in: []byte{5, 1}, wantErr: "request cut short"},
		{name: "short address", in: []byte{5, 1, 0, 1, 10, 0}, wantErr: "request cut short"},
		{name: "short name", in: []byte{5, 1, 0, 3, 9, 'a'}, wantErr: "request cut short"},
		{name: "short port", in: []byte{5, 1, 0, 3, 1, 'a', 0}, wantErr: "request cut short"},
		{name: "empty name", in: []byte{5, 1, 0, 3, 0, 0, 80}, wantCode: repGeneralFailure, wantErr: "empty domain name"},
		{name: "control byte in name", in: []byte{5, 1, 0, 3, 3, 'a', '\n', 'b', 0, 80}, wantCode: repGeneralFailure, wantErr: `domain name "a\nb" is not a host name`},
		{name: "bracket in name", in: []byte{5, 1, 0, 3, 3, 'a', '[', 'b', 0, 80}, wantCode: repGeneralFailure, wantErr: `domain name "a[b" is not a host name`},
		{name: "ipv6 literal as a name", in: []byte{5, 1, 0, 3, 7, 'f', 'd', '0', '0', ':', ':', '1', 0, 80}, want: socksRequest{Cmd: 1, Host: "fd00::1", Port: 80}},
		{name: "address type", in: []byte{5, 1, 0, 2, 0}, wantCode: repAddressTypeNotSupported, wantErr: "address type 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readRequest(bytes.NewReader(tt.in))
			if tt.wantErr != "" {
				var se *socksError
				if !errors.As(err, &se) || se.msg != tt.wantErr || se.code != tt.wantCode {
					t.Fatalf("readRequest = %v (%#v), want code %d %q", err, err, tt.wantCode, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAppendReply(t *testing.T) {
	tests := []struct {
		bound net.Addr
		want  []byte
	}{
		{bound: nil, want: []byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}},
		{bound: &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 1080}, want: []byte{5, 0, 0, 1, 10, 0, 0, 1, 4, 56}},
		{bound: &net.TCPAddr{IP: net.ParseIP("fd00::1"), Port: 1}, want: append(append([]byte{5, 0, 0, 4}, net.ParseIP("fd00::1")...), 0, 1)},
		{bound: &net.UnixAddr{Name: "x"}, want: []byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, appendReply(nil, repSucceeded, tt.bound)); diff != "" {
			t.Errorf("appendReply(%v) mismatch (-want +got):\n%s", tt.bound, diff)
		}
	}
}

func TestEnv(t *testing.T) {
	local, err := egress.NewFilter([]string{"db", "*.example.com", "10.0.0.0/8", "fd00::/8", "cache:6379", "[::1]:5432"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	remote, err := egress.NewFilter(nil, []string{"redis"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		filter *egress.Filter
		want   []string
	}{
		{filter: nil, want: env("localhost,127.0.0.0/8,::1")},
		{filter: local, want: env("localhost,127.0.0.0/8,::1,db,.example.com,10.0.0.0/8,fd00::/8")},
		{filter: remote, want: env("localhost,127.0.0.0/8,::1")},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, Env("127.0.0.1:1080", tt.filter)); diff != "" {
			t.Errorf("Env with %v mismatch (-want +got):\n%s", tt.filter.Rules(), diff)
		}
	}
}

func env(noProxy string) []string {
	return []string{
		"ALL_PROXY=socks5h://127.0.0.1:1080", "all_proxy=socks5h://127.0.0.1:1080",
		"HTTP_PROXY=http://127.0.0.1:1080", "http_proxy=http://127.0.0.1:1080",
		"HTTPS_PROXY=http://127.0.0.1:1080", "https_proxy=http://127.0.0.1:1080",
		"NO_PROXY=" + noProxy, "no_proxy=" + noProxy,
	}
}

// FuzzSOCKSHandshake: whatever a client sends, parsing never panics, errors are one line, and a
// parsed request encodes back to the bytes it was read from.
func FuzzSOCKSHandshake(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 3, 5, 'r', 'e', 'd', 'i', 's', 0x18, 0xeb})
	f.Add(append(append([]byte{5, 2, 0, 2, 5, 1, 0, 4}, net.ParseIP("fd00::1")...), 0, 80))
	f.Add([]byte{5, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 80})
	f.Add([]byte{5, 1, 0, 5, 1, 0, 9})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		if _, err := readGreeting(r); err != nil {
			checkSOCKSError(t, err)
			return
		}
		start := len(in) - r.Len()
		q, err := readRequest(r)
		if err != nil {
			checkSOCKSError(t, err)
			return
		}
		consumed := in[start : len(in)-r.Len()]
		if q.Host == "" {
			t.Fatalf("request %x parsed with an empty host", consumed)
		}
		if _, _, err := net.SplitHostPort(q.address()); err != nil {
			t.Fatalf("address %q for %+v: %v", q.address(), q, err)
		}
		if _, err := netip.ParseAddr(q.Host); err == nil && consumed[3] == atypDomain {
			return // an IP literal sent as a name encodes back as an address
		}
		want := append([]byte(nil), consumed...)
		want[2] = 0 // the reserved byte is not kept
		if want[3] == atypIPv6 {
			if a := netip.AddrFrom16([16]byte(want[4:20])); a.Is4In6() {
				return // sent back as IPv4
			}
		}
		if got := appendRequest(nil, q); !bytes.Equal(got, want) {
			t.Fatalf("request %x parsed as %+v, which encodes to %x", consumed, q, got)
		}
	})
}

func checkSOCKSError(t *testing.T, err error) {
	t.Helper()
	var se *socksError
	if !errors.As(err, &se) {
		t.Fatalf("error %T %v, want *socksError", err, err)
	}
	if strings.ContainsAny(se.msg, "\r\n") {
		t.Fatalf("multi-line error %q", se.msg)
	}
}
