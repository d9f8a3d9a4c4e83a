package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/net/dns/dnsmessage"
)

func TestParseResolvConf(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want ResolvConf
	}{
		{
			name: "kubelet",
			in:   string(podConf),
			want: ResolvConf{Nameservers: addrs("10.96.0.10"), Search: []string{"ns.svc.cluster.local", "svc.cluster.local", "cluster.local"}, Options: []string{"ndots:5"}},
		},
		{
			name: "empty: the pod's loopback, as libc does",
			in:   "",
			want: ResolvConf{Nameservers: addrs("127.0.0.1", "::1")},
		},
		{
			name: "comments, CRLF, bad and extra nameservers",
			in:   "# c\r\n; c\r\nnameserver 10.0.0.1 # trailing\r\nnameserver bogus\r\nnameserver fd00::a\r\nnameserver ::ffff:10.0.0.3\r\nnameserver 10.0.0.4\r\n  \r\n",
			want: ResolvConf{Nameservers: addrs("10.0.0.1", "fd00::a", "10.0.0.3")},
		},
		{
			name: "the last of domain and search wins",
			in:   "search a b\ndomain c\n",
			want: ResolvConf{Nameservers: addrs("127.0.0.1", "::1"), Search: []string{"c"}},
		},
		{
			name: "search after domain, options on several lines",
			in:   "domain c\nsearch a. b\noptions ndots:2 timeout:1\noptions\tuse-vc\nsortlist 10.0.0.0/8\nnameserver 1.1.1.1\n",
			want: ResolvConf{Nameservers: addrs("1.1.1.1"), Search: []string{"a.", "b"}, Options: []string{"ndots:2", "timeout:1", "use-vc"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ParseResolvConf([]byte(tt.in))
			if diff := cmp.Diff(tt.want, got, cmpAddr, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNamespaceResolvConf(t *testing.T) {
	got := string(NamespaceResolvConf(podConf, netip.MustParseAddr("169.254.20.53")))
	want := `# Written by kubectl-trafficlab from the pod's resolv.conf: queries go to the plugin,
# which asks the pod's nameservers (10.96.0.10).
nameserver 169.254.20.53
search ns.svc.cluster.local svc.cluster.local cluster.local
options ndots:5
`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
}

// FuzzParseResolvConf: any bytes parse, and the namespace's file keeps exactly the pod's search list
// and options under our one nameserver.
func FuzzParseResolvConf(f *testing.F) {
	f.Add(podConf)
	f.Add([]byte("domain a\nsearch\noptions\nnameserver ::1%lo\n#x\n"))
	f.Add([]byte("search a#b ;c\nnameserver 1.2.3.4\n"))
	ours := netip.MustParseAddr("10.0.0.53")
	f.Fuzz(func(t *testing.T, b []byte) {
		pod := ParseResolvConf(b)
		if len(pod.Nameservers) == 0 || len(pod.Nameservers) > maxNameservers {
			t.Fatalf("%d nameservers", len(pod.Nameservers))
		}
		ns := ParseResolvConf(NamespaceResolvConf(b, ours))
		want := ResolvConf{Nameservers: []netip.Addr{ours}, Search: pod.Search, Options: pod.Options}
		if diff := cmp.Diff(want, ns, cmpAddr, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("namespace resolv.conf for %q mismatch (-want +got):\n%s", b, diff)
		}
	})
}

type refusingDialer struct{}

func (refusingDialer) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("connection refused")
}

// FuzzAnswer: whatever a client sends, answering never panics, and any response is a response to
// the client's ID that parses and fits the transport.
func FuzzAnswer(f *testing.F) {
	for _, name := range []string{"db.ns.svc.cluster.local.", "x.local.", "redis.", "gone."} {
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 1, RecursionDesired: true})
		_ = b.StartQuestions()
		_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
		_ = b.StartAdditionals()
		var opt dnsmessage.ResourceHeader
		_ = opt.SetEDNS0(1232, dnsmessage.RCodeSuccess, false)
		_ = b.OPTResource(opt, dnsmessage.OPTResource{})
		msg, _ := b.Finish()
		f.Add(msg, false)
		f.Add(msg, true)
	}
	var many []netip.Addr
	for i := range 200 {
		many = append(many, netip.AddrFrom4([4]byte{10, 0, 1, byte(i)}), netip.AddrFrom16([16]byte{0xfd, 15: byte(i)}))
	}
	s := &Server{
		Dialer: refusingDialer{},
		Pod:    ParseResolvConf(podConf),
		Filter: mustFilter(f, []string{"db", "*.local"}, nil),
		Host:   hostResolver{"db": addrs("192.168.1.7", "fd00::7"), "x.local": many},
	}
	f.Fuzz(func(t *testing.T, msg []byte, overTCP bool) {
		resp := s.answer(context.Background(), msg, overTCP)
		if resp == nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(resp)
		if err != nil {
			t.Fatalf("response %x does not parse: %v", resp, err)
		}
		if !h.Response || h.ID != binary.BigEndian.Uint16(msg) {
			t.Fatalf("response %+v to a message with ID %d", h, binary.BigEndian.Uint16(msg))
		}
		if !overTCP && len(resp) > 0xffff {
			t.Fatalf("UDP response of %d bytes", len(resp))
		}
	})
}
