package meshtest

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestIstioArgs(t *testing.T) {
	common := []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "*", "-d", "15090,15021,15020"}
	tproxy := []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-b", "*", "-d", "15090,15021,15020"}
	for rs, want := range map[RuleSet][]string{
		IstioLegacy:            append(common[:len(common):len(common)], "--force-iptables-binary=legacy"),
		IstioNft:               append(common[:len(common):len(common)], "--force-iptables-binary=nft"),
		IstioNftables:          append(common[:len(common):len(common)], "--native-nftables"),
		IstioTPROXYLegacy:      append(tproxy[:len(tproxy):len(tproxy)], "--force-iptables-binary=legacy"),
		IstioTPROXYNftables:    append(tproxy[:len(tproxy):len(tproxy)], "--native-nftables"),
		IstioDualStackNftables: append(common[:len(common):len(common)], "--dual-stack", "--native-nftables"),
		LinkerdLegacy:          nil,
	} {
		if diff := cmp.Diff(want, rs.IstioArgs()); diff != "" {
			t.Errorf("%s: IstioArgs() (-want +got):\n%s", rs, diff)
		}
	}
}

func TestLinkerdCommands(t *testing.T) {
	got := LinkerdNft.LinkerdCommands()
	if len(got) != 20 {
		t.Fatalf("LinkerdCommands() has %d commands, want 10 for IPv4 and 10 for IPv6", len(got))
	}
	c := func(what string) []string {
		return []string{"-m", "comment", "--comment", "proxy-init/" + what + "/trafficlab"}
	}
	want := [][]string{
		append([]string{"iptables-nft", "-t", "nat", "-N", "PROXY_INIT_REDIRECT"}, c("redirect-common-chain")...),
		append([]string{"iptables-nft", "-t", "nat", "-A", "PROXY_INIT_REDIRECT", "-p", "tcp", "--match", "multiport", "--dports", "4190,4191,4567,4568", "-j", "RETURN"}, c("ignore-port-4190,4191,4567,4568")...),
		append([]string{"iptables-nft", "-t", "nat", "-A", "PROXY_INIT_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-port", "4143"}, c("redirect-all-incoming-to-proxy-port")...),
		append([]string{"iptables-nft", "-t", "nat", "-A", "PREROUTING", "-j", "PROXY_INIT_REDIRECT"}, c("install-proxy-init-prerouting")...),
		append([]string{"iptables-nft", "-t", "nat", "-N", "PROXY_INIT_OUTPUT"}, c("redirect-common-chain")...),
		append([]string{"iptables-nft", "-t", "nat", "-A", "PROXY_INIT_OUTPUT", "-m", "owner", "--uid-owner", "2102", "-j", "RETURN"}, c("ignore-proxy-user-id")...),
		append([]string{"iptables-nft", "-t", "nat", "-A", "PROXY_INIT_OUTPUT", "-o", "lo", "-j", "RETURN"}, c("ignore-loopback")...),
		append([]string{"iptables-nft", "-t", "nat", "-A", "PROXY_INIT_OUTPUT", "-p", "tcp", "--match", "multiport", "--dports", "4567,4568", "-j", "RETURN"}, c("ignore-port-4567,4568")...),
		append([]string{"iptables-nft", "-t", "nat", "-A", "PROXY_INIT_OUTPUT", "-p", "tcp", "-j", "REDIRECT", "--to-port", "4140"}, c("redirect-all-outgoing-to-proxy-port")...),
		append([]string{"iptables-nft", "-t", "nat", "-A", "OUTPUT", "-j", "PROXY_INIT_OUTPUT"}, c("install-proxy-init-output")...),
	}
	if diff := cmp.Diff(want, got[:10]); diff != "" {
		t.Errorf("LinkerdCommands() IPv4 (-want +got):\n%s", diff)
	}
	if got[10][0] != "ip6tables-nft" || LinkerdLegacy.LinkerdCommands()[0][0] != "iptables-legacy" {
		t.Errorf("LinkerdCommands() binaries: %q, %q", got[10][0], LinkerdLegacy.LinkerdCommands()[0][0])
	}
	if IstioNft.LinkerdCommands() != nil {
		t.Errorf("IstioNft.LinkerdCommands() = %v, want nil", IstioNft.LinkerdCommands())
	}
}

func TestRuleSetProperties(t *testing.T) {
	type props struct {
		Mesh, Source      string
		TPROXY, DualStack bool
	}
	got := map[RuleSet]props{}
	for _, rs := range All {
		got[rs] = props{rs.Mesh(), rs.Source(), rs.TPROXY(), rs.DualStack()}
	}
	want := map[RuleSet]props{
		IstioLegacy:            {"Istio", "iptables-legacy", false, false},
		IstioNft:               {"Istio", "iptables-nft", false, false},
		IstioNftables:          {"Istio", "nftables", false, false},
		IstioTPROXYLegacy:      {"Istio", "iptables-legacy", true, false},
		IstioTPROXYNftables:    {"Istio", "nftables", true, false},
		IstioDualStackLegacy:   {"Istio", "iptables-legacy", false, true},
		IstioDualStackNftables: {"Istio", "nftables", false, true},
		LinkerdLegacy:          {"Linkerd", "iptables-legacy", false, false},
		LinkerdNft:             {"Linkerd", "iptables-nft", false, false},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
