package meshrules

import (
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/mdlayher/netlink"
)

// exercise runs what a parsed rule set goes through after reading, so the fuzzers reach the
// evaluator with whatever the parsers accept.
func exercise(r *Rules) {
	in, err := r.Inbound()
	if err != nil {
		return
	}
	in.Captured(8080)
	in.PassBack(podAddr, netip.AddrPortFrom(podAddr, 8080), 0, 0, passMark)
}

func FuzzParseLegacyBlob(f *testing.F) {
	files, _ := filepath.Glob("testdata/*/legacy-*.bin")
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(filepath.Base(file) == "legacy-ip6-nat.bin", b)
	}
	f.Fuzz(func(t *testing.T, v6 bool, b []byte) {
		fam := FamilyIPv4
		if v6 {
			fam = FamilyIPv6
		}
		tb, err := parseLegacyBlob(fam, "nat", b)
		if err != nil {
			return
		}
		exercise(&Rules{Tables: []*Table{tb}})
	})
}

// FuzzParseRuleMsg feeds NEWRULE messages (the golden replies' rules as seeds) to the raw
// parser and the expression decoder.
func FuzzParseRuleMsg(f *testing.F) {
	files, _ := filepath.Glob("testdata/*/nft.bin")
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		for len(b) >= 6 {
			n := binary.LittleEndian.Uint32(b[2:])
			b = b[6:]
			for range n {
				l := binary.LittleEndian.Uint32(b)
				var m netlink.Message
				if err := m.UnmarshalBinary(b[4 : 4+l]); err != nil {
					f.Fatal(err)
				}
				if m.Header.Type == newRuleType {
					f.Add(m.Data)
				}
				b = b[4+l:]
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		k, raws, err := parseRuleMsg(data)
		if err != nil {
			return
		}
		for _, fam := range []Family{FamilyIPv4, FamilyIPv6, FamilyINet} {
			r, err := decodeNft(fam, raws)
			if err != nil {
				continue
			}
			ch := &Chain{Name: k.Chain, Hook: HookPrerouting, Type: "nat", Rules: []Rule{r}}
			out := &Chain{Name: "out", Hook: HookOutput, Type: "nat", Rules: []Rule{r}}
			exercise(&Rules{Tables: []*Table{{Source: SourceNftables, Family: fam, Name: k.Table, Chains: []*Chain{ch, out}}}})
		}
	})
}

// FuzzXt feeds xt match and target infos to the decoders both forms share.
func FuzzXt(f *testing.F) {
	names := []string{"tcp", "udp", "multiport", "owner", "mark", "comment", "REDIRECT", "TPROXY", "MARK"}
	for i := range names {
		f.Add(uint8(i), uint8(1), false, make([]byte, 48))
	}
	f.Fuzz(func(t *testing.T, name, rev uint8, v6 bool, info []byte) {
		fam := FamilyIPv4
		if v6 {
			fam = FamilyIPv6
		}
		n := names[int(name)%len(names)]
		ms, err := xtMatch(n, rev, info)
		if err != nil {
			return
		}
		a, err := xtTarget(n, rev, fam, info)
		if err != nil {
			return
		}
		r := Rule{Matches: ms, Actions: []Action{a}}
		exercise(&Rules{Tables: []*Table{{Source: SourceLegacy, Family: fam, Name: "nat", Chains: []*Chain{
			{Name: "PREROUTING", Hook: HookPrerouting, Type: "nat", Rules: []Rule{r}},
			{Name: "OUTPUT", Hook: HookOutput, Type: "nat", Rules: []Rule{r}},
		}}}})
	})
}
