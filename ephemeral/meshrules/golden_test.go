package meshrules

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"

	"github.com/trafficlab/kubectl-trafficlab/internal/meshtest"
)

// update makes the kernel tests (TestKernelRuleSets) write what they read from the kernel into
// testdata, the golden files the unit tests (TestGoldenRuleSets) parse without root.
var update = flag.Bool("update", false, "write the rules read by the kernel tests into testdata")

// view is what the tests compare of an Inbound.
type view struct {
	Mesh, Mode, Source        string
	ProxyUID                  uint32
	HasProxyUID               bool
	InboundPort, OutboundPort uint16
	PassSource, PassSource6   netip.Addr
}

func viewOf(in Inbound) view {
	return view{in.Mesh, in.Mode, in.Source, in.ProxyUID, in.HasProxyUID, in.InboundPort, in.OutboundPort, in.PassSource, in.PassSource6}
}

// wantInbound is the classification of each real rule set, written from the meshes' documented
// defaults (not from what this package returns).
func wantInbound(rs meshtest.RuleSet) view {
	switch {
	case rs.TPROXY():
		return view{Mesh: MeshIstio, Mode: ModeTPROXY, Source: rs.Source(), InboundPort: meshtest.IstioInboundPort}
	case rs.Mesh() == "Istio":
		v := view{Mesh: MeshIstio, Mode: ModeSidecar, Source: rs.Source(), ProxyUID: meshtest.IstioProxyUID, HasProxyUID: true,
			InboundPort: meshtest.IstioInboundPort, OutboundPort: meshtest.IstioOutboundPort,
			PassSource: netip.MustParseAddr("127.0.0.6")}
		if rs.DualStack() {
			v.PassSource6 = netip.MustParseAddr("::6")
		}
		return v
	default:
		return view{Mesh: MeshLinkerd, Mode: ModeSidecar, Source: rs.Source(), ProxyUID: meshtest.LinkerdProxyUID, HasProxyUID: true,
			InboundPort: meshtest.LinkerdInboundPort, OutboundPort: meshtest.LinkerdOutboundPort}
	}
}

// notCaptured are inbound ports each rule set leaves to the app.
func notCaptured(rs meshtest.RuleSet) []int {
	if rs.Mesh() == "Istio" {
		return append([]int{meshtest.IstioTunnelPort}, meshtest.IstioExcludedInbound...)
	}
	return meshtest.LinkerdIgnoredInbound
}

// The pod's addresses in the kernel tests, which the golden files were recorded with (the IPv6
// one for dual-stack rule sets).
var (
	podAddr  = netip.MustParseAddr("10.44.0.2")
	podAddr6 = netip.MustParseAddr("fd44::2")
)

// checkRuleSet asserts what a real rule set's rules say: the classification, which ports are
// captured, and the pass-back connections, for the kernel test and the golden unit test alike.
func checkRuleSet(t *testing.T, rs meshtest.RuleSet, rules *Rules) {
	t.Helper()
	in, err := rules.Inbound()
	if err != nil {
		t.Fatalf("Inbound(): %v\nrules:\n%s", err, dump(rules))
	}
	if diff := cmp.Diff(wantInbound(rs), viewOf(in), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Fatalf("Inbound() (-want +got):\n%s\nrules:\n%s", diff, dump(rules))
	}
	if rs.TPROXY() {
		return
	}
	for _, p := range []int{8080, 80, 1, 65535} {
		if ok, err := in.Captured(uint16(p)); err != nil || !ok {
			t.Errorf("Captured(%d) = %v, %v; want true", p, ok, err)
		}
	}
	for _, p := range notCaptured(rs) {
		if ok, err := in.Captured(uint16(p)); err != nil || ok {
			t.Errorf("Captured(%d) = %v, %v; want false", p, ok, err)
		}
	}
	proxy := uint32(meshtest.IstioProxyUID)
	if rs.Mesh() == "Linkerd" {
		proxy = meshtest.LinkerdProxyUID
	}
	for _, pod := range []netip.Addr{podAddr, podAddr6} {
		app := netip.AddrPortFrom(pod, 8080)
		// The agent's pass-back: as root (the agent's uid with capabilities) with the pass mark.
		o, err := in.PassBack(pod, app, 0, 0, passMark)
		if err != nil || o.Fate != Passed {
			t.Errorf("PassBack(%s, uid 0) = %v, %v; want passed", app, o, err)
		}
		// The sidecar's own connections, evaluated as the mesh sees them.
		pass := in.PassSourceFor(pod)
		if !pass.IsValid() {
			pass = pod
		}
		o, err = rules.Evaluate(Conn{Hook: HookOutput, Src: netip.AddrPortFrom(pass, 0), Dst: app, OutIface: "lo", UID: proxy, GID: proxy})
		if err != nil || o.Fate != Passed {
			t.Errorf("the sidecar's pass to %s from %s = %v, %v; want passed", app, pass, o, err)
		}
		o, err = rules.Evaluate(Conn{Hook: HookOutput, Src: netip.AddrPortFrom(pod, 0), Dst: app, OutIface: "lo", UID: proxy, GID: proxy})
		want := Outcome{Fate: Passed}
		if rs.Mesh() == "Istio" && (pod.Is4() || rs.DualStack()) {
			// Envoy calling its own pod's address goes through its inbound listener.
			want = Outcome{Fate: Captured, Port: meshtest.IstioInboundPort}
		}
		if err != nil || o.Fate != want.Fate || o.Port != want.Port {
			t.Errorf("the sidecar's call to its own pod %s from %s = %v, %v; want %v", app, pod, o, err, want)
		}
	}
}

// passMark is the agent's pass-through mark (netfilter.PassMark), repeated so the test does not
// depend on it staying what it is: the meshes' rules must pass any mark.
const passMark = 0x7f1a0000

func dump(r *Rules) string {
	var b strings.Builder
	for _, t := range r.Tables {
		fmt.Fprintf(&b, "%s\n", t)
		for _, c := range t.Chains {
			fmt.Fprintf(&b, "  chain %s (hook %s, type %q, priority %d)\n", c.Name, c.Hook, c.Type, c.Priority)
			for i, rule := range c.Rules {
				fmt.Fprintf(&b, "    %d: %s\n", i+1, rule)
			}
		}
	}
	return b.String()
}

// Golden files: testdata/<rule set>/legacy-<family>-<table>.bin is a legacy table as getLegacy
// returned it; nft.bin the nftables netlink replies readNft received, in order: for each
// request, its message type (uint16), the number of replies (uint32), and each reply's length
// (uint32) and bytes.

func goldenDir(rs string) string { return filepath.Join("testdata", rs) }

// recorder keeps the replies next gives to nftables' requests.
type recorder struct {
	next nltest.Func
	out  bytes.Buffer
}

func (r *recorder) dial(req []netlink.Message) ([]netlink.Message, error) {
	replies, err := r.next(req)
	if len(req) == 0 || err != nil {
		return replies, err
	}
	if len(req) != 1 {
		return nil, fmt.Errorf("recorder: %d messages in one request", len(req))
	}
	binary.Write(&r.out, binary.LittleEndian, uint16(req[0].Header.Type))
	binary.Write(&r.out, binary.LittleEndian, uint32(len(replies)))
	for _, m := range replies {
		b, err := m.MarshalBinary()
		if err != nil {
			return nil, err
		}
		binary.Write(&r.out, binary.LittleEndian, uint32(len(b)))
		r.out.Write(b)
	}
	return replies, nil
}

// replay answers nftables' requests with recorded replies, checking that it asks the same
// things in the same order.
func replay(data []byte) nltest.Func {
	return func(req []netlink.Message) ([]netlink.Message, error) {
		if len(req) == 0 {
			return nil, io.EOF // nltest asks for multicast messages after an empty reply: none
		}
		if len(data) < 6 {
			return nil, fmt.Errorf("replay: request of type %d after the recording's end", req[0].Header.Type)
		}
		typ, n := binary.LittleEndian.Uint16(data), binary.LittleEndian.Uint32(data[2:])
		data = data[6:]
		if typ != uint16(req[0].Header.Type) {
			return nil, fmt.Errorf("replay: request of type %d, recorded %d", req[0].Header.Type, typ)
		}
		var replies []netlink.Message
		for range n {
			if len(data) < 4 {
				return nil, errors.New("replay: truncated")
			}
			l := binary.LittleEndian.Uint32(data)
			if uint32(len(data)-4) < l {
				return nil, errors.New("replay: truncated")
			}
			var m netlink.Message
			if err := m.UnmarshalBinary(data[4 : 4+l]); err != nil {
				return nil, err
			}
			m.Header.Sequence, m.Header.PID = req[0].Header.Sequence, req[0].Header.PID
			replies = append(replies, m)
			data = data[4+l:]
		}
		return replies, nil
	}
}

// readGolden reads a rule set's golden files into Rules, as Read would have.
func readGolden(t *testing.T, rs string) *Rules {
	t.Helper()
	dir := goldenDir(rs)
	var rules Rules
	for _, fam := range []Family{FamilyIPv4, FamilyIPv6} {
		for _, table := range legacyTables {
			b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("legacy-%s-%s.bin", fam, table)))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			tb, err := parseLegacyBlob(fam, table, b)
			if err != nil {
				t.Fatalf("parse %s %s: %v", fam, table, err)
			}
			rules.Tables = append(rules.Tables, tb)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "nft.bin"))
	if err != nil {
		t.Fatalf("%v (run the kernel test with -update)", err)
	}
	var idx ruleIndex
	c, err := nftables.New(nftables.WithTestDial(idx.wrap(replay(b))))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := readNft(c, &idx)
	if err != nil {
		t.Fatalf("read nftables replies: %v", err)
	}
	rules.Tables = append(rules.Tables, tables...)
	return &rules
}

// TestGoldenRuleSets classifies every real rule set from what the kernel said in the kernel
// test, without root.
func TestGoldenRuleSets(t *testing.T) {
	for _, rs := range meshtest.All {
		t.Run(string(rs), func(t *testing.T) {
			checkRuleSet(t, rs, readGolden(t, string(rs)))
		})
	}
}

// checkOther asserts the classification of a rule set that is no mesh's: no mesh when wantErr
// is empty, else an error containing wantErr.
func checkOther(t *testing.T, rules *Rules, wantErr string) {
	t.Helper()
	in, err := rules.Inbound()
	if wantErr == "" {
		if err != nil || viewOf(in) != (view{}) {
			t.Errorf("Inbound() = %+v, %v; want no mesh\nrules:\n%s", viewOf(in), err, dump(rules))
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), wantErr) {
		t.Errorf("Inbound() = %+v, %v; want an error containing %q\nrules:\n%s", viewOf(in), err, wantErr, dump(rules))
	}
}

// TestGoldenOtherRuleSets: no mesh, and the rule sets the kernel test shows are refused.
func TestGoldenOtherRuleSets(t *testing.T) {
	for golden, wantErr := range otherRuleSets {
		t.Run(golden, func(t *testing.T) {
			checkOther(t, readGolden(t, golden), wantErr)
		})
	}
}

// otherRuleSets are the kernel test's rule sets that are no mesh's, by golden directory, with
// the error Inbound must give ("" for none).
var otherRuleSets = map[string]string{
	"none":                     "",
	"unknown-legacy-statistic": "cannot evaluate the match -m statistic (revision 0)",
	"unknown-nftables-numgen":  "cannot evaluate the match nftables expression numgen",
	"unknown-mesh":             "captured to port 9999 by iptables-nft ip nat PREROUTING rule 1, by rules of no mesh trafficlab knows",
}
