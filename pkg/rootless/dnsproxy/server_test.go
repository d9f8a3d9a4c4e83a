package dnsproxy

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/egress"
)

func mustFilter(t testing.TB, local, remote []string) *egress.Filter {
	t.Helper()
	f, err := egress.NewFilter(local, remote)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func lookup(t *testing.T, r *net.Resolver, network, name string) ([]netip.Addr, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	as, err := r.LookupNetIP(ctx, network, name)
	for i, a := range as {
		as[i] = a.Unmap()
	}
	slices.SortFunc(as, netip.Addr.Compare)
	return as, err
}

// rawQuery builds a question; ednsSize 0 sends no OPT record.
func rawQuery(t *testing.T, id uint16, name string, typ dnsmessage.Type, ednsSize int) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	_ = b.StartQuestions()
	if err := b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	if ednsSize > 0 {
		_ = b.StartAdditionals()
		var opt dnsmessage.ResourceHeader
		_ = opt.SetEDNS0(ednsSize, dnsmessage.RCodeSuccess, false)
		_ = b.OPTResource(opt, dnsmessage.OPTResource{})
	}
	msg, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func askUDP(t *testing.T, d *dnsServer, msg []byte) []byte {
	t.Helper()
	c, err := net.Dial("udp", d.udp.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// parsed is a response reduced to what the tests compare.
type parsed struct {
	ID        uint16
	RCode     dnsmessage.RCode
	Truncated bool
	Question  string
	Answers   []netip.Addr
	OPT       bool
}

func parse(t *testing.T, msg []byte) parsed {
	t.Helper()
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		t.Fatalf("response does not parse: %v", err)
	}
	if !h.Response {
		t.Fatalf("response without QR bit")
	}
	out := parsed{ID: h.ID, RCode: h.RCode, Truncated: h.Truncated}
	qs, err := p.AllQuestions()
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) == 1 {
		out.Question = qs[0].Name.String()
	}
	ans, err := p.AllAnswers()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range ans {
		switch r := a.Body.(type) {
		case *dnsmessage.AResource:
			out.Answers = append(out.Answers, netip.AddrFrom4(r.A))
		case *dnsmessage.AAAAResource:
			out.Answers = append(out.Answers, netip.AddrFrom16(r.AAAA))
		}
	}
	_ = p.SkipAllAuthorities()
	extra, _ := p.AllAdditionals()
	for _, a := range extra {
		out.OPT = out.OPT || a.Header.Type == dnsmessage.TypeOPT
	}
	return out
}

var cmpAddr = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func TestGoResolverThroughThePod(t *testing.T) {
	pod, _, d := newServer(t, nil, nil)
	r := d.client()
	tests := []struct {
		network, name string
		want          []netip.Addr
		notFound      bool
	}{
		{network: "ip4", name: "redis.ns.svc.cluster.local.", want: addrs("10.96.0.20")},
		{network: "ip6", name: "redis.ns.svc.cluster.local.", want: addrs("fd00::20")},
		{network: "ip", name: "redis.ns.svc.cluster.local.", want: addrs("10.96.0.20", "fd00::20")},
		{network: "ip4", name: "REDIS.other-ns.svc.cluster.local.", want: addrs("10.96.1.20")},
		{network: "ip4", name: "nothing.ns.svc.cluster.local.", notFound: true},
	}
	for _, tt := range tests {
		got, err := lookup(t, r, tt.network, tt.name)
		if tt.notFound {
			if !isNotFound(err) {
				t.Errorf("LookupNetIP(%s, %s) = %v, %v; want NXDOMAIN passed through", tt.network, tt.name, got, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("LookupNetIP(%s, %s): %v", tt.network, tt.name, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got, cmpAddr); diff != "" {
			t.Errorf("LookupNetIP(%s, %s) mismatch (-want +got):\n%s", tt.network, tt.name, diff)
		}
	}
	for _, q := range pod.questions() {
		if q.Network != "udp" {
			t.Errorf("question %+v reached the pod over %s, want udp", q, q.Network)
		}
	}
	if d.tcp.count() != 0 {
		t.Errorf("%d TCP clients for answers that fit in UDP", d.tcp.count())
	}
}

// TestForwardedUnchanged: the pod's nameserver gets the client's bytes, EDNS0 and ID included, and
// the client gets the pod's answer as it was.
func TestForwardedUnchanged(t *testing.T) {
	pod, dialer, d := newServer(t, nil, nil)
	q := rawQuery(t, 0xbeef, "Redis.NS.svc.cluster.local.", dnsmessage.TypeA, 1232)
	resp := askUDP(t, d, q)
	if raw := pod.rawQuestions(); len(raw) != 1 || !bytes.Equal(raw[0], q) {
		t.Fatalf("the pod got %x, want %x", raw, q)
	}
	want := pod.respond("udp", q)
	if !bytes.Equal(resp, want) {
		t.Errorf("answer %x, want the pod's %x", resp, want)
	}
	if diff := cmp.Diff([]string{"udp 10.96.0.10:53"}, dialer.dialed()); diff != "" {
		t.Errorf("dials mismatch (-want +got):\n%s", diff)
	}
}

func TestTruncation(t *testing.T) {
	pod, _, d := newServer(t, nil, nil)
	r := d.client()

	// 1.6 kB is more than Go's 1232-byte EDNS0 size: TC over UDP, the client asks again over TCP.
	got, err := lookup(t, r, "ip4", "big.ns.svc.cluster.local.")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 100 {
		t.Errorf("got %d addresses for big, want 100", len(got))
	}
	if d.tcp.count() != 1 {
		t.Errorf("%d TCP clients, want the client's one retry", d.tcp.count())
	}
	wantSeen := []seen{
		{Network: "udp", Name: "big.ns.svc.cluster.local.", Type: dnsmessage.TypeA},
		{Network: "tcp", Name: "big.ns.svc.cluster.local.", Type: dnsmessage.TypeA}, // our retry of the pod's TC
		{Network: "tcp", Name: "big.ns.svc.cluster.local.", Type: dnsmessage.TypeA}, // the client's retry
	}
	if diff := cmp.Diff(wantSeen, pod.questions()); diff != "" {
		t.Errorf("questions mismatch (-want +got):\n%s", diff)
	}

	// 700 bytes: the pod truncates at 512, but the client takes 1232, so our TCP retry's answer goes
	// back over UDP and the client never needs TCP.
	got, err = lookup(t, r, "ip4", "medium.ns.svc.cluster.local.")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 40 || d.tcp.count() != 1 {
		t.Errorf("medium: %d addresses and %d TCP clients, want 40 and still 1", len(got), d.tcp.count())
	}

	// Without EDNS0 a client takes 512 bytes: medium is truncated for it.
	p := parse(t, askUDP(t, d, rawQuery(t, 7, "medium.ns.svc.cluster.local.", dnsmessage.TypeA, 0)))
	if !p.Truncated || len(p.Answers) != 0 || p.ID != 7 {
		t.Errorf("medium without EDNS0: %+v, want TC and no answers", p)
	}
	p = parse(t, askUDP(t, d, rawQuery(t, 8, "medium.ns.svc.cluster.local.", dnsmessage.TypeA, 4096)))
	if p.Truncated || len(p.Answers) != 40 {
		t.Errorf("medium with EDNS0 4096: truncated %v, %d answers; want all 40", p.Truncated, len(p.Answers))
	}
}

// TestTCPClient: pipelined questions on one connection, answered over TCP to the pod.
func TestTCPClient(t *testing.T) {
	pod, _, d := newServer(t, nil, nil)
	c, err := net.Dial("tcp", d.tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	names := map[uint16]string{1: "redis.ns.svc.cluster.local.", 2: "big.ns.svc.cluster.local.", 3: "nothing."}
	for id := uint16(1); id <= 3; id++ {
		if err := writeMsg(c, rawQuery(t, id, names[id], dnsmessage.TypeA, 0)); err != nil {
			t.Fatal(err)
		}
	}
	got := map[uint16]parsed{}
	for range 3 {
		msg, err := readMsg(c)
		if err != nil {
			t.Fatal(err)
		}
		p := parse(t, msg)
		got[p.ID] = parsed{RCode: p.RCode, Question: p.Question, Answers: p.Answers[:min(len(p.Answers), 1)], Truncated: p.Truncated}
	}
	want := map[uint16]parsed{
		1: {Question: "redis.ns.svc.cluster.local.", Answers: addrs("10.96.0.20")},
		2: {Question: "big.ns.svc.cluster.local.", Answers: addrs("10.97.0.0")},
		3: {Question: "nothing.", RCode: dnsmessage.RCodeNameError},
	}
	if diff := cmp.Diff(want, got, cmpAddr); diff != "" {
		t.Errorf("answers mismatch (-want +got):\n%s", diff)
	}
	for _, q := range pod.questions() {
		if q.Network != "tcp" {
			t.Errorf("question %+v went to the pod over %s, want tcp for a TCP client", q, q.Network)
		}
	}
}

// TestTimeout: a pod nameserver that never answers costs the client a SERVFAIL after the bound, not
// its own 5 s timeouts.
func TestTimeout(t *testing.T) {
	pod := startFakePod(t)
	d := startServer(t, &Server{Dialer: &podDialer{pod: pod}, Pod: ParseResolvConf(podConf), Timeout: time.Second})
	// askUDP waits 10 s, past the bound: an answer at all is the bound at work.
	p := parse(t, askUDP(t, d, rawQuery(t, 9, "slow.", dnsmessage.TypeA, 1232)))
	if diff := cmp.Diff(parsed{ID: 9, RCode: dnsmessage.RCodeServerFailure, Question: "slow.", OPT: true}, p); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
	// Two tries at the one nameserver: one lost datagram must not fail the question.
	if n := len(pod.questions()); n != 2 {
		t.Errorf("the pod was asked %d times, want 2", n)
	}

	// Go's resolver reports its own timeouts as such; a SERVFAIL is a temporary failure that is not one.
	_, err := lookup(t, d.client(), "ip4", "slow.")
	var dnsErr *net.DNSError
	if !errorsAs(err, &dnsErr) || dnsErr.IsNotFound || dnsErr.IsTimeout || !dnsErr.IsTemporary {
		t.Errorf("Go resolver: %v, want a server failure, not a timeout", err)
	}
}

func TestPodUnreachable(t *testing.T) {
	conf := ParseResolvConf([]byte("nameserver 10.96.0.11\n"))
	d := startServer(t, &Server{Dialer: &podDialer{}, Pod: conf})
	p := parse(t, askUDP(t, d, rawQuery(t, 3, "redis.", dnsmessage.TypeA, 0)))
	if p.RCode != dnsmessage.RCodeServerFailure {
		t.Errorf("rcode %v, want SERVFAIL when the nameserver cannot be dialed", p.RCode)
	}
}

// TestLocalName: --local db answers db, under every search-domain variant, from this machine, and
// the pod never hears of it (it has its own db, which must not win).
func TestLocalName(t *testing.T) {
	filter := mustFilter(t, []string{"db", "gone", "broken"}, nil)
	host := hostResolver{"db": addrs("192.168.1.7", "fd00::7"), "v6only": addrs("fd00::8")}
	pod, dialer, d := newServer(t, filter, host)
	r := d.client()
	for _, name := range []string{"db.ns.svc.cluster.local.", "db.svc.cluster.local.", "db.cluster.local.", "DB."} {
		got, err := lookup(t, r, "ip", name)
		if err != nil {
			t.Fatalf("LookupNetIP(%s): %v", name, err)
		}
		if diff := cmp.Diff(addrs("192.168.1.7", "fd00::7"), got, cmpAddr); diff != "" {
			t.Errorf("LookupNetIP(%s) mismatch (-want +got):\n%s", name, diff)
		}
	}
	if got := filter.Route(netip.MustParseAddrPort("192.168.1.7:5432")); got != egress.Local {
		t.Errorf("db's address routed %v after resolution, want local", got)
	}
	if got := filter.Route(netip.MustParseAddrPort("[fd00::7]:5432")); got != egress.Local {
		t.Errorf("db's IPv6 address routed %v after resolution, want local", got)
	}
	if _, err := lookup(t, r, "ip", "gone."); !isNotFound(err) {
		t.Errorf("local name unknown here: %v, want NXDOMAIN", err)
	}
	p := parse(t, askUDP(t, d, rawQuery(t, 4, "broken.", dnsmessage.TypeA, 0)))
	if p.RCode != dnsmessage.RCodeServerFailure {
		t.Errorf("local resolver failure: rcode %v, want SERVFAIL", p.RCode)
	}
	// Other types of a local name: NODATA, not the pod's records.
	p = parse(t, askUDP(t, d, rawQuery(t, 5, "db.ns.svc.cluster.local.", dnsmessage.TypeTXT, 1232)))
	if diff := cmp.Diff(parsed{ID: 5, Question: "db.ns.svc.cluster.local.", OPT: true}, p); diff != "" {
		t.Errorf("TXT for a local name mismatch (-want +got):\n%s", diff)
	}
	if len(pod.questions()) != 0 || len(dialer.dialed()) != 0 {
		t.Errorf("the pod was asked %v (dials %v), want nothing for a local name", pod.questions(), dialer.dialed())
	}
	// Names the filter does not keep still go to the pod.
	if got, err := lookup(t, r, "ip4", "redis.ns.svc.cluster.local."); err != nil || len(got) != 1 {
		t.Errorf("redis: %v, %v", got, err)
	}
}

// TestLocalManyAddresses: a local answer that does not fit a UDP client is truncated like any other.
func TestLocalManyAddresses(t *testing.T) {
	var many []netip.Addr
	for i := range 60 {
		many = append(many, netip.AddrFrom4([4]byte{192, 168, 2, byte(i)}))
	}
	_, _, d := newServer(t, mustFilter(t, []string{"many"}, nil), hostResolver{"many": many})
	p := parse(t, askUDP(t, d, rawQuery(t, 6, "many.", dnsmessage.TypeA, 0)))
	if !p.Truncated || len(p.Answers) != 0 {
		t.Errorf("60 addresses without EDNS0: truncated %v, %d answers; want TC", p.Truncated, len(p.Answers))
	}
	got, err := lookup(t, d.client(), "ip4", "many.")
	if err != nil || len(got) != 60 {
		t.Errorf("Go resolver: %d addresses, %v; want all 60", len(got), err)
	}
}

// TestRemoteNamesRecorded: with --remote redis, redis resolves in the pod and its addresses go through
// the pod; other names resolve on this machine, as the connections that follow stay here.
func TestRemoteNamesRecorded(t *testing.T) {
	filter := mustFilter(t, nil, []string{"redis:6379"})
	pod, _, d := newServer(t, filter, hostResolver{"example.com": addrs("93.184.215.14")})
	r := d.client()
	if _, err := lookup(t, r, "ip", "redis.ns.svc.cluster.local."); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dest string
		want egress.Route
	}{
		{dest: "10.96.0.20:6379", want: egress.Remote},
		{dest: "[fd00::20]:6379", want: egress.Remote},
		{dest: "10.96.0.20:80", want: egress.Local},
		{dest: "10.96.0.21:6379", want: egress.Local},
	}
	for _, tt := range tests {
		if got := filter.Route(netip.MustParseAddrPort(tt.dest)); got != tt.want {
			t.Errorf("Route(%s) = %v, want %v", tt.dest, got, tt.want)
		}
	}
	got, err := lookup(t, r, "ip4", "example.com.")
	if err != nil || !slices.Equal(got, addrs("93.184.215.14")) {
		t.Errorf("example.com: %v, %v; want this machine's answer", got, err)
	}
	for _, q := range pod.questions() {
		if q.Name == "example.com." {
			t.Errorf("the pod was asked %+v, want it resolved here", q)
		}
	}
}

func TestMalformed(t *testing.T) {
	_, _, d := newServer(t, nil, nil)
	// Two questions: FORMERR (RFC 9619).
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 11})
	_ = b.StartQuestions()
	_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName("a."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName("b."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	msg, _ := b.Finish()
	if p := parse(t, askUDP(t, d, msg)); p.RCode != dnsmessage.RCodeFormatError || p.ID != 11 {
		t.Errorf("two questions: %+v, want FORMERR", p)
	}
	// Garbage shorter than a header gets no answer; the server keeps serving.
	c, _ := net.Dial("udp", d.udp.LocalAddr().String())
	_, _ = c.Write([]byte{1, 2, 3})
	c.Close()
	if p := parse(t, askUDP(t, d, rawQuery(t, 12, "redis.ns.svc.cluster.local.", dnsmessage.TypeA, 0))); len(p.Answers) != 1 {
		t.Errorf("after garbage: %+v", p)
	}
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
