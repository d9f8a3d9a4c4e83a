package netfilter

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

func TestRedirectValidate(t *testing.T) {
	ok := Redirect{Ports: []uint16{80}, ListenPort: 15001, Mark: 0x7f1a0000}
	tests := []struct {
		name    string
		edit    func(r *Redirect)
		wantErr string
	}{
		{name: "ok", edit: func(*Redirect) {}},
		{name: "duplicates are fine", edit: func(r *Redirect) { r.Ports = []uint16{80, 80, 443} }},
		{name: "no ports", edit: func(r *Redirect) { r.Ports = nil }, wantErr: "no port to redirect"},
		{name: "port 0", edit: func(r *Redirect) { r.Ports = []uint16{80, 0} }, wantErr: "port 0 cannot be redirected"},
		{name: "listen port 0", edit: func(r *Redirect) { r.ListenPort = 0 }, wantErr: "listen port must not be 0"},
		{name: "listen port stolen", edit: func(r *Redirect) { r.Ports = []uint16{80, 15001} }, wantErr: "listen port 15001 is also a port to redirect"},
		{name: "mark 0", edit: func(r *Redirect) { r.Mark = 0 }, wantErr: "mark must not be 0"},
		{name: "istio", edit: func(r *Redirect) { r.Mesh = istioMesh }},
		{name: "linkerd", edit: func(r *Redirect) { r.Mesh = &MeshRedirect{ProxyUID: 2102} }},
		{name: "mesh uid 0", edit: func(r *Redirect) { r.Mesh = &MeshRedirect{} }, wantErr: "mesh proxy uid must not be 0"},
		{
			name: "mesh source mapped",
			edit: func(r *Redirect) {
				r.Mesh = &MeshRedirect{ProxyUID: 1337, ProxySources: []netip.Addr{netip.MustParseAddr("::ffff:127.0.0.6")}}
			},
			wantErr: `mesh proxy source "::ffff:127.0.0.6" is not a plain IPv4 or IPv6 address`,
		},
		{
			name: "two pass sources of a family",
			edit: func(r *Redirect) {
				r.Mesh = &MeshRedirect{ProxyUID: 1337, PassSources: []netip.Addr{netip.MustParseAddr("127.0.0.6"), netip.MustParseAddr("127.0.0.7")}}
			},
			wantErr: "pass-through sources [127.0.0.6 127.0.0.7]: at most one per address family",
		},
		{
			name:    "pass source invalid",
			edit:    func(r *Redirect) { r.Mesh = &MeshRedirect{ProxyUID: 1337, PassSources: []netip.Addr{{}}} },
			wantErr: `pass-through source "invalid IP" is not a plain IPv4 or IPv6 address`,
		},
		{
			name:    "mesh source invalid",
			edit:    func(r *Redirect) { r.Mesh = &MeshRedirect{ProxyUID: 1337, ProxySources: []netip.Addr{{}}} },
			wantErr: `mesh proxy source "invalid IP" is not a plain IPv4 or IPv6 address`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok
			r.Ports = append([]uint16(nil), ok.Ports...)
			tt.edit(&r)
			err := r.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
			if _, err := Batch("abc", r, true); err == nil {
				t.Errorf("Batch accepted an invalid redirect")
			}
		})
	}
	if _, err := Batch("Bad", ok, true); err == nil || !strings.Contains(err.Error(), "only a-z and 0-9") {
		t.Errorf("Batch(%q) = %v, want an id error", "Bad", err)
	}
}

// The golden dumps below show each message as a header line and its attributes, and each rule
// expression on one line next to what `nft --debug=netlink` prints for it. Numbers are the raw
// attribute bytes in hex: big endian except the mark and ct status mask, which nf_tables keeps
// in host order (ne renders those).

func ne(v uint32) string { return fmt.Sprintf("%x", binary.NativeEndian.AppendUint32(nil, v)) }

var (
	goldenBegin = []string{"BATCH_BEGIN unspec req res_id=000a"}
	goldenEnd   = []string{"BATCH_END unspec req res_id=000a"}
)

func goldenChain(name, typ, hook string) []string {
	return goldenChainAt(name, typ, hook, "ffffff92") // -110
}

func goldenChainAt(name, typ, hook, priority string) []string {
	return []string{
		"NEWCHAIN inet req|ack|create",
		`  table="trafficlab_abc\x00"`,
		fmt.Sprintf("  name=%q", name+"\x00"),
		"  hook{hooknum=" + hook + " priority=" + priority + "}",
		fmt.Sprintf("  type=%q", typ+"\x00"),
	}
}

func goldenRule(chain string, exprs ...string) []string {
	out := []string{
		"NEWRULE inet req|ack|create|append",
		`  table="trafficlab_abc\x00"`,
		fmt.Sprintf("  chain=%q", chain+"\x00"),
		"  expressions",
	}
	for _, e := range exprs {
		out = append(out, "    "+e)
	}
	return out
}

const (
	l4protoTCP1 = `meta{key=00000010 dreg=00000001}`                                               // [ meta load l4proto => reg 1 ]
	l4protoTCP2 = `cmp{sreg=00000001 op=00000000 data{value=06}}`                                  // [ cmp eq reg 1 0x00000006 ]
	dport       = `payload{dreg=00000001 base=00000002 offset=00000002 len=00000002}`              // [ payload load 2b @ transport header + 2 => reg 1 ]
	redir       = `redir{reg_proto_min=00000001 flags=00000002}`                                   // [ redir proto_min reg 1 flags 0x2 ]
	oifname     = `meta{key=00000007 dreg=00000001}`                                               // [ meta load oifname => reg 1 ]
	isLo        = `cmp{sreg=00000001 op=00000000 data{value=6c6f0000000000000000000000000000}}`    // [ cmp eq reg 1 0x00006f6c 0x0 0x0 0x0 ]
	markLoad    = `meta{key=00000003 dreg=00000001}`                                               // [ meta load mark => reg 1 ]
	flagsLoad   = `payload{dreg=00000001 base=00000002 offset=0000000d len=00000001}`              // [ payload load 1b @ transport header + 13 => reg 1 ]
	synAckMask  = `bitwise{sreg=00000001 dreg=00000001 len=00000001 mask{value=12} xor{value=00}}` // [ bitwise reg 1 = ( reg 1 & 0x12 ) ^ 0x0 ]
	isSyn       = `cmp{sreg=00000001 op=00000000 data{value=02}}`                                  // [ cmp eq reg 1 0x02 ]
	ctStatus    = `ct{key=00000002 dreg=00000001}`                                                 // [ ct load status => reg 1 ]
	accept      = `immediate{dreg=00000000 data{verdict{code=00000001}}}`                          // [ immediate reg 0 accept ]
	drop        = `immediate{dreg=00000000 data{verdict{code=00000000}}}`                          // [ immediate reg 0 drop ]
	fibDaddr    = `fib{dreg=00000001 flags=00000002 result=00000003}`                              // [ fib daddr type => reg 1 ]
	tproxy      = `tproxy{family=00000000 reg_port=00000001}`                                      // [ tproxy port reg 1 ]
)

// istioMesh is Istio 1.10 and later: uid 1337, from 127.0.0.6 and ::6.
var istioMesh = &MeshRedirect{
	ProxyUID:     1337,
	ProxySources: []netip.Addr{netip.MustParseAddr("127.0.0.6"), netip.MustParseAddr("::6")},
	PassSources:  []netip.Addr{netip.MustParseAddr("127.0.0.6"), netip.MustParseAddr("::6")},
}

const (
	skuidLoad  = `meta{key=0000000a dreg=00000001}`                                  // [ meta load skuid => reg 1 ]
	nfprotoLd  = `meta{key=0000000f dreg=00000001}`                                  // [ meta load nfproto => reg 1 ]
	isIPv4     = `cmp{sreg=00000001 op=00000000 data{value=02}}`                     // [ cmp eq reg 1 0x00000002 ]
	isIPv6     = `cmp{sreg=00000001 op=00000000 data{value=0a}}`                     // [ cmp eq reg 1 0x0000000a ]
	saddr4     = `payload{dreg=00000001 base=00000001 offset=0000000c len=00000004}` // [ payload load 4b @ network header + 12 => reg 1 ]
	saddr6     = `payload{dreg=00000001 base=00000001 offset=00000008 len=00000010}` // [ payload load 16b @ network header + 8 => reg 1 ]
	is127006   = `cmp{sreg=00000001 op=00000000 data{value=7f000006}}`               // [ cmp eq reg 1 0x0600007f ]
	isColons6  = `cmp{sreg=00000001 op=00000000 data{value=00000000000000000000000000000006}}`
	fibSaddr   = `fib{dreg=00000001 flags=00000001 result=00000003}` // [ fib saddr type => reg 1 ]
	priority90 = "ffffffa6"                                          // -90
)

// uidIs and uidNot are [ cmp eq reg 1 UID ] and [ cmp neq reg 1 UID ] (host order).
func uidIs(uid uint32) string  { return `cmp{sreg=00000001 op=00000000 data{value=` + ne(uid) + `}}` }
func uidNot(uid uint32) string { return `cmp{sreg=00000001 op=00000001 data{value=` + ne(uid) + `}}` }

// isLocal is [ cmp eq reg 1 0x00000002 ] (RTN_LOCAL, host order).
var isLocal = `cmp{sreg=00000001 op=00000000 data{value=` + ne(2) + `}}`

// markNot is [ cmp neq reg 1 MARK ].
func markNe(mark uint32) string { return `cmp{sreg=00000001 op=00000001 data{value=` + ne(mark) + `}}` }

func dportIs(hex string) string { return `cmp{sreg=00000001 op=00000000 data{value=` + hex + `}}` } // [ cmp eq reg 1 PORT ]
func redirTo(hex string) string { return `immediate{dreg=00000001 data{value=` + hex + `}}` }       // [ immediate reg 1 PORT ]

func TestBatchGolden(t *testing.T) {
	// 80 = 0050, 8080 = 1f90, 15001 = 3a99
	tests := []struct {
		name  string
		r     Redirect
		owned bool
		want  [][]string
	}{
		{
			name:  "owned, ports sorted and deduplicated",
			r:     Redirect{Ports: []uint16{8080, 80, 8080}, ListenPort: 15001, Mark: 0x7f1a0000},
			owned: true,
			want: [][]string{
				goldenBegin,
				{
					// Create|Excl: a table that exists is somebody else's, never adopted.
					"NEWTABLE inet req|ack|excl|create",
					`  name="trafficlab_abc\x00"`,
					"  flags=00000002", // NFT_TABLE_F_OWNER
				},
				goldenChain("prerouting", "nat", "00000000"),
				goldenChain("output", "nat", "00000003"),
				goldenChain("input", "filter", "00000001"),
				// fib daddr type local meta l4proto tcp tcp dport 80 tcp flags & (syn | ack) == syn redirect to :15001
				goldenRule("prerouting", fibDaddr, isLocal, l4protoTCP1, l4protoTCP2, dport, dportIs("0050"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), redir),
				goldenRule("prerouting", fibDaddr, isLocal, l4protoTCP1, l4protoTCP2, dport, dportIs("1f90"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), redir),
				// oifname "lo" meta mark != 0x7f1a0000 meta l4proto tcp tcp dport 80 tcp flags & (syn | ack) == syn
				// redirect to :15001
				goldenRule("output", oifname, isLo, markLoad,
					`cmp{sreg=00000001 op=00000001 data{value=`+ne(0x7f1a0000)+`}}`, // [ cmp neq reg 1 0x7f1a0000 ]
					l4protoTCP1, l4protoTCP2, dport, dportIs("0050"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), redir),
				goldenRule("output", oifname, isLo, markLoad,
					`cmp{sreg=00000001 op=00000001 data{value=`+ne(0x7f1a0000)+`}}`,
					l4protoTCP1, l4protoTCP2, dport, dportIs("1f90"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), redir),
				// meta l4proto tcp tcp dport 15001 ct status dnat accept
				goldenRule("input", l4protoTCP1, l4protoTCP2, dport, dportIs("3a99"), ctStatus,
					`bitwise{sreg=00000001 dreg=00000001 len=00000004 mask{value=`+ne(0x20)+`} xor{value=00000000}}`, // [ bitwise reg 1 = ( reg 1 & 0x20 ) ^ 0 ]
					`cmp{sreg=00000001 op=00000001 data{value=00000000}}`,                                            // [ cmp neq reg 1 0 ]
					accept),
				// meta l4proto tcp tcp dport 15001 drop
				goldenRule("input", l4protoTCP1, l4protoTCP2, dport, dportIs("3a99"), drop),
				goldenEnd,
			},
		},
		{
			name: "not owned (kernel before 5.12): tproxy",
			r:    Redirect{Ports: []uint16{8080, 80}, ListenPort: 15001, Mark: 1},
			want: [][]string{
				goldenBegin,
				{
					"NEWTABLE inet req|ack|excl|create",
					`  name="trafficlab_abc\x00"`,
					"  flags=00000000",
				},
				goldenChainAt("prerouting", "filter", "00000000", "ffffff6a"), // -150
				goldenChain("input", "filter", "00000001"),
				// fib daddr type local meta mark != 0x1 meta l4proto tcp tcp dport 80
				// tcp flags & (syn | ack) == syn tproxy to :15001 accept
				goldenRule("prerouting", fibDaddr, isLocal, markLoad, markNe(1),
					l4protoTCP1, l4protoTCP2, dport, dportIs("0050"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), tproxy, accept),
				goldenRule("prerouting", fibDaddr, isLocal, markLoad, markNe(1),
					l4protoTCP1, l4protoTCP2, dport, dportIs("1f90"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), tproxy, accept),
				// meta l4proto tcp tcp dport 15001 drop
				goldenRule("input", l4protoTCP1, l4protoTCP2, dport, dportIs("3a99"), drop),
				goldenEnd,
			},
		},
		{
			name:  "owned, after Istio's sidecar",
			r:     Redirect{Ports: []uint16{80}, ListenPort: 15001, Mark: 0x7f1a0000, Mesh: istioMesh},
			owned: true,
			want: [][]string{
				goldenBegin,
				{"NEWTABLE inet req|ack|excl|create", `  name="trafficlab_abc\x00"`, "  flags=00000002"},
				// After the mesh's dstnat.
				goldenChainAt("prerouting", "nat", "00000000", priority90),
				goldenChain("output", "nat", "00000003"),
				goldenChain("input", "filter", "00000001"),
				goldenRule("prerouting", fibDaddr, isLocal, l4protoTCP1, l4protoTCP2, dport, dportIs("0050"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), redir),
				// oifname "lo" meta mark != 0x7f1a0000 meta skuid != 1337 meta l4proto tcp tcp dport 80 ... redirect to :15001
				goldenRule("output", oifname, isLo, markLoad, markNe(0x7f1a0000), skuidLoad, uidNot(1337),
					l4protoTCP1, l4protoTCP2, dport, dportIs("0050"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), redir),
				// oifname "lo" meta mark != 0x7f1a0000 meta skuid 1337 meta nfproto ipv4 ip saddr 127.0.0.6 ... redirect to :15001
				goldenRule("output", oifname, isLo, markLoad, markNe(0x7f1a0000), skuidLoad, uidIs(1337), nfprotoLd, isIPv4, saddr4, is127006,
					l4protoTCP1, l4protoTCP2, dport, dportIs("0050"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), redir),
				// oifname "lo" meta mark != 0x7f1a0000 meta skuid 1337 meta nfproto ipv6 ip6 saddr ::6 ... redirect to :15001
				goldenRule("output", oifname, isLo, markLoad, markNe(0x7f1a0000), skuidLoad, uidIs(1337), nfprotoLd, isIPv6, saddr6, isColons6,
					l4protoTCP1, l4protoTCP2, dport, dportIs("0050"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), redir),
				goldenRule("input", l4protoTCP1, l4protoTCP2, dport, dportIs("3a99"), ctStatus,
					`bitwise{sreg=00000001 dreg=00000001 len=00000004 mask{value=`+ne(0x20)+`} xor{value=00000000}}`,
					`cmp{sreg=00000001 op=00000001 data{value=00000000}}`,
					accept),
				goldenRule("input", l4protoTCP1, l4protoTCP2, dport, dportIs("3a99"), drop),
				goldenEnd,
			},
		},
		{
			name:  "owned, after Linkerd's sidecar",
			r:     Redirect{Ports: []uint16{80}, ListenPort: 15001, Mark: 0x7f1a0000, Mesh: &MeshRedirect{ProxyUID: 2102}},
			owned: true,
			want: [][]string{
				goldenBegin,
				{"NEWTABLE inet req|ack|excl|create", `  name="trafficlab_abc\x00"`, "  flags=00000002"},
				goldenChainAt("prerouting", "nat", "00000000", priority90),
				goldenChain("output", "nat", "00000003"),
				goldenChain("input", "filter", "00000001"),
				goldenRule("prerouting", fibDaddr, isLocal, l4protoTCP1, l4protoTCP2, dport, dportIs("0050"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), redir),
				goldenRule("output", oifname, isLo, markLoad, markNe(0x7f1a0000), skuidLoad, uidNot(2102),
					l4protoTCP1, l4protoTCP2, dport, dportIs("0050"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), redir),
				// oifname "lo" meta mark != 0x7f1a0000 meta skuid 2102 fib saddr type local ... redirect to :15001
				goldenRule("output", oifname, isLo, markLoad, markNe(0x7f1a0000), skuidLoad, uidIs(2102), fibSaddr, isLocal,
					l4protoTCP1, l4protoTCP2, dport, dportIs("0050"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), redir),
				goldenRule("input", l4protoTCP1, l4protoTCP2, dport, dportIs("3a99"), ctStatus,
					`bitwise{sreg=00000001 dreg=00000001 len=00000004 mask{value=`+ne(0x20)+`} xor{value=00000000}}`,
					`cmp{sreg=00000001 op=00000001 data{value=00000000}}`,
					accept),
				goldenRule("input", l4protoTCP1, l4protoTCP2, dport, dportIs("3a99"), drop),
				goldenEnd,
			},
		},
		{
			name: "not owned, after a mesh's sidecar: tproxy after its dstnat",
			r:    Redirect{Ports: []uint16{80}, ListenPort: 15001, Mark: 1, Mesh: istioMesh},
			want: [][]string{
				goldenBegin,
				{"NEWTABLE inet req|ack|excl|create", `  name="trafficlab_abc\x00"`, "  flags=00000000"},
				goldenChainAt("prerouting", "filter", "00000000", priority90),
				goldenChain("input", "filter", "00000001"),
				goldenRule("prerouting", fibDaddr, isLocal, markLoad, markNe(1),
					l4protoTCP1, l4protoTCP2, dport, dportIs("0050"), flagsLoad, synAckMask, isSyn, redirTo("3a99"), tproxy, accept),
				goldenRule("input", l4protoTCP1, l4protoTCP2, dport, dportIs("3a99"), drop),
				goldenEnd,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msgs, err := Batch("abc", tt.r, tt.owned)
			if err != nil {
				t.Fatalf("Batch: %v", err)
			}
			if diff := cmp.Diff(tt.want, dumpMessages(t, msgs)); diff != "" {
				t.Errorf("batch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDeleteBatchGolden(t *testing.T) {
	want := [][]string{
		goldenBegin,
		{"DELTABLE inet req|ack", `  name="trafficlab_abc\x00"`},
		goldenEnd,
	}
	if diff := cmp.Diff(want, dumpMessages(t, deleteBatch("trafficlab_abc"))); diff != "" {
		t.Errorf("batch (-want +got):\n%s", diff)
	}
}

// TestTableMessageBytes pins the owned NEWTABLE byte for byte, in the layout of the older golden
// tests, as a check on the dumper itself.
func TestTableMessageBytes(t *testing.T) {
	msgs, err := Batch("abc", Redirect{Ports: []uint16{80}, ListenPort: 8080, Mark: 1}, true)
	if err != nil {
		t.Fatal(err)
	}
	want := message{
		Type:  msgType(unix.NFT_MSG_NEWTABLE),
		Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl,
		Data: words(concat(
			[]byte{unix.NFPROTO_INET, 0, 0, 0},
			[]byte{19, 0, unix.NFTA_TABLE_NAME, 0}, []byte("trafficlab_abc\x00"), []byte{0},
			[]byte{8, 0, unix.NFTA_TABLE_FLAGS, 0}, []byte{0, 0, 0, 2},
		)),
	}
	if diff := cmp.Diff(want, messages(msgs[1:2])[0]); diff != "" {
		t.Errorf("NEWTABLE (-want +got):\n%s", diff)
	}
}

// Attribute names by context, from linux/netfilter/nf_tables.h.
type schema map[uint16]field

type field struct {
	name   string
	nested schema // non-nil: the attribute must carry NLA_F_NESTED and holds these
	exprs  bool   // NFTA_RULE_EXPRESSIONS: a list of expressions
}

var (
	dataSchema = schema{
		unix.NFTA_DATA_VALUE:   {name: "value"},
		unix.NFTA_DATA_VERDICT: {name: "verdict", nested: schema{unix.NFTA_VERDICT_CODE: {name: "code"}, unix.NFTA_VERDICT_CHAIN: {name: "chain"}}},
	}
	msgSchemas = map[int]schema{
		unix.NFT_MSG_NEWTABLE: {unix.NFTA_TABLE_NAME: {name: "name"}, unix.NFTA_TABLE_FLAGS: {name: "flags"}},
		unix.NFT_MSG_DELTABLE: {unix.NFTA_TABLE_NAME: {name: "name"}, unix.NFTA_TABLE_FLAGS: {name: "flags"}},
		unix.NFT_MSG_NEWCHAIN: {
			unix.NFTA_CHAIN_TABLE: {name: "table"},
			unix.NFTA_CHAIN_NAME:  {name: "name"},
			unix.NFTA_CHAIN_HOOK: {name: "hook", nested: schema{
				unix.NFTA_HOOK_HOOKNUM:  {name: "hooknum"},
				unix.NFTA_HOOK_PRIORITY: {name: "priority"},
			}},
			unix.NFTA_CHAIN_POLICY: {name: "policy"},
			unix.NFTA_CHAIN_TYPE:   {name: "type"},
		},
		unix.NFT_MSG_NEWRULE: {
			unix.NFTA_RULE_TABLE:       {name: "table"},
			unix.NFTA_RULE_CHAIN:       {name: "chain"},
			unix.NFTA_RULE_EXPRESSIONS: {name: "expressions", exprs: true},
		},
	}
	exprSchemas = map[string]schema{
		"meta": {unix.NFTA_META_DREG: {name: "dreg"}, unix.NFTA_META_KEY: {name: "key"}, unix.NFTA_META_SREG: {name: "sreg"}},
		"cmp": {
			unix.NFTA_CMP_SREG: {name: "sreg"},
			unix.NFTA_CMP_OP:   {name: "op"},
			unix.NFTA_CMP_DATA: {name: "data", nested: dataSchema},
		},
		"payload": {
			unix.NFTA_PAYLOAD_DREG:   {name: "dreg"},
			unix.NFTA_PAYLOAD_BASE:   {name: "base"},
			unix.NFTA_PAYLOAD_OFFSET: {name: "offset"},
			unix.NFTA_PAYLOAD_LEN:    {name: "len"},
		},
		"immediate": {
			unix.NFTA_IMMEDIATE_DREG: {name: "dreg"},
			unix.NFTA_IMMEDIATE_DATA: {name: "data", nested: dataSchema},
		},
		"redir": {
			unix.NFTA_REDIR_REG_PROTO_MIN: {name: "reg_proto_min"},
			unix.NFTA_REDIR_REG_PROTO_MAX: {name: "reg_proto_max"},
			unix.NFTA_REDIR_FLAGS:         {name: "flags"},
		},
		"fib": {unix.NFTA_FIB_DREG: {name: "dreg"}, unix.NFTA_FIB_RESULT: {name: "result"}, unix.NFTA_FIB_FLAGS: {name: "flags"}},
		"tproxy": {
			expr.NFTA_TPROXY_FAMILY:   {name: "family"},
			expr.NFTA_TPROXY_REG_ADDR: {name: "reg_addr"},
			expr.NFTA_TPROXY_REG_PORT: {name: "reg_port"},
		},
		"ct": {unix.NFTA_CT_DREG: {name: "dreg"}, unix.NFTA_CT_KEY: {name: "key"}, unix.NFTA_CT_DIRECTION: {name: "direction"}},
		"bitwise": {
			unix.NFTA_BITWISE_SREG: {name: "sreg"},
			unix.NFTA_BITWISE_DREG: {name: "dreg"},
			unix.NFTA_BITWISE_LEN:  {name: "len"},
			unix.NFTA_BITWISE_MASK: {name: "mask", nested: dataSchema},
			unix.NFTA_BITWISE_XOR:  {name: "xor", nested: dataSchema},
		},
	}
	msgNames = map[int]string{
		unix.NFT_MSG_NEWTABLE: "NEWTABLE", unix.NFT_MSG_DELTABLE: "DELTABLE",
		unix.NFT_MSG_NEWCHAIN: "NEWCHAIN", unix.NFT_MSG_NEWRULE: "NEWRULE",
	}
)

// dumpMessages renders messages for golden comparison. Every attribute must be known to the
// schema of its context, so an unexpected one shows up in the diff.
func dumpMessages(t *testing.T, msgs []netlink.Message) [][]string {
	t.Helper()
	var out [][]string
	for _, m := range msgs {
		out = append(out, dumpMessage(t, m))
	}
	return out
}

func dumpMessage(t *testing.T, m netlink.Message) []string {
	t.Helper()
	if len(m.Data) < 4 {
		t.Fatalf("message of type %#x has no nfgenmsg", m.Header.Type)
	}
	family := map[byte]string{unix.AF_UNSPEC: "unspec", unix.NFPROTO_INET: "inet"}[m.Data[0]]
	if m.Data[1] != unix.NFNETLINK_V0 {
		t.Errorf("nfgenmsg version %d", m.Data[1])
	}
	flags := dumpFlags(m.Header.Flags)
	switch m.Header.Type {
	case unix.NFNL_MSG_BATCH_BEGIN, unix.NFNL_MSG_BATCH_END:
		name := "BATCH_BEGIN"
		if m.Header.Type == unix.NFNL_MSG_BATCH_END {
			name = "BATCH_END"
		}
		line := fmt.Sprintf("%s %s %s res_id=%x", name, family, flags, m.Data[2:4])
		if len(m.Data) > 4 {
			line += fmt.Sprintf(" extra=%x", m.Data[4:])
		}
		return []string{line}
	}
	if m.Header.Type>>8 != unix.NFNL_SUBSYS_NFTABLES {
		t.Fatalf("message type %#x is not nf_tables", m.Header.Type)
	}
	typ := int(m.Header.Type & 0xff)
	out := []string{fmt.Sprintf("%s %s %s", msgNames[typ], family, flags)}
	if m.Data[2] != 0 || m.Data[3] != 0 {
		out[0] += fmt.Sprintf(" res_id=%x", m.Data[2:4])
	}
	for _, a := range decodeAttrs(t, m.Data[4:]) {
		f, ok := msgSchemas[typ][a.Type&^unix.NLA_F_NESTED]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("  attr%d=%x", a.Type, a.Data))
		case f.exprs:
			out = append(out, "  "+f.name+nestedMark(a, true))
			for _, elem := range decodeAttrs(t, a.Data) {
				out = append(out, "    "+dumpExpr(t, elem))
			}
		default:
			out = append(out, "  "+dumpAttr(t, a, f))
		}
	}
	return out
}

// dumpExpr renders one NFTA_LIST_ELEM as name{attributes}.
func dumpExpr(t *testing.T, elem netlink.Attribute) string {
	t.Helper()
	if elem.Type != unix.NLA_F_NESTED|unix.NFTA_LIST_ELEM {
		return fmt.Sprintf("attr%d=%x", elem.Type, elem.Data)
	}
	var name string
	var data []netlink.Attribute
	for _, a := range decodeAttrs(t, elem.Data) {
		switch a.Type {
		case unix.NFTA_EXPR_NAME:
			name = strings.TrimSuffix(string(a.Data), "\x00")
		case unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA:
			data = decodeAttrs(t, a.Data)
		default:
			t.Errorf("expression attribute %d", a.Type)
		}
	}
	return name + dumpFields(t, data, exprSchemas[name])
}

func dumpFields(t *testing.T, attrs []netlink.Attribute, s schema) string {
	t.Helper()
	var parts []string
	for _, a := range attrs {
		f, ok := s[a.Type&^unix.NLA_F_NESTED]
		if !ok {
			parts = append(parts, fmt.Sprintf("attr%d=%x", a.Type, a.Data))
			continue
		}
		parts = append(parts, dumpAttr(t, a, f))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func dumpAttr(t *testing.T, a netlink.Attribute, f field) string {
	t.Helper()
	if f.nested != nil {
		return f.name + nestedMark(a, true) + dumpFields(t, decodeAttrs(t, a.Data), f.nested)
	}
	if mark := nestedMark(a, false); mark != "" {
		return f.name + mark
	}
	if n := len(a.Data); n > 1 && a.Data[n-1] == 0 && isText(a.Data[:n-1]) {
		return fmt.Sprintf("%s=%q", f.name, a.Data)
	}
	return fmt.Sprintf("%s=%x", f.name, a.Data)
}

// nestedMark flags an attribute whose NLA_F_NESTED bit is not what its schema says.
func nestedMark(a netlink.Attribute, want bool) string {
	if (a.Type&unix.NLA_F_NESTED != 0) != want {
		return fmt.Sprintf("(NLA_F_NESTED=%v!)", !want)
	}
	return ""
}

func isText(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return len(b) > 0
}

func decodeAttrs(t *testing.T, b []byte) []netlink.Attribute {
	t.Helper()
	attrs, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		t.Fatalf("decode attributes %x: %v", b, err)
	}
	return attrs
}

func dumpFlags(f netlink.HeaderFlags) string {
	names := []struct {
		bit  netlink.HeaderFlags
		name string
	}{
		{netlink.Request, "req"}, {netlink.Multi, "multi"}, {netlink.Acknowledge, "ack"}, {netlink.Echo, "echo"},
		{netlink.Replace, "replace"}, {netlink.Excl, "excl"}, {netlink.Create, "create"}, {netlink.Append, "append"},
	}
	var parts []string
	for _, n := range names {
		if f&n.bit != 0 {
			parts = append(parts, n.name)
			f &^= n.bit
		}
	}
	if f != 0 {
		parts = append(parts, fmt.Sprintf("%#x", uint16(f)))
	}
	return strings.Join(parts, "|")
}
