package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trafficlab/kubectl-trafficlab/internal/meshtest"
)

const prev = `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/x"}],"ips":[{"address":"10.88.0.7/16","interface":0}]}`

func conf(prevResult string) string {
	c := `{"cniVersion":"1.0.0","name":"trafficlab","type":"trafficlab-meshinit","istioIptables":"/cache/istio-iptables"`
	if prevResult != "" {
		c += `,"prevResult":` + prevResult
	}
	return c + "}"
}

type call struct {
	Netns string
	Argv  []string
}

func TestRun(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string
		stdin     string
		wantOut   string
		wantCalls []call
		wantErr   string
	}{
		{
			name:    "a pod outside the mesh namespaces passes through",
			env:     map[string]string{"CNI_COMMAND": "ADD", "CNI_NETNS": "/ns/a", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=tl-e2e-steal-x1;K8S_POD_NAME=web"},
			stdin:   conf(prev),
			wantOut: prev,
		},
		{
			name:      "Istio in iptables-legacy: istio-iptables with istio-cni's flags in the pod's netns",
			env:       map[string]string{"CNI_COMMAND": "ADD", "CNI_NETNS": "/ns/b", "CNI_ARGS": "K8S_POD_NAMESPACE=tl-mesh-istio-iptables-legacy-0a1b2c;K8S_POD_NAME=echo"},
			stdin:     conf(prev),
			wantOut:   prev,
			wantCalls: []call{{"/ns/b", append([]string{"/cache/istio-iptables"}, meshtest.IstioLegacy.IstioArgs()...)}},
		},
		{
			name:      "Linkerd in iptables-nft: proxy-init's commands",
			env:       map[string]string{"CNI_COMMAND": "ADD", "CNI_NETNS": "/ns/c", "CNI_ARGS": "K8S_POD_NAMESPACE=tl-mesh-linkerd-iptables-nft;K8S_POD_NAME=echo"},
			stdin:     conf(prev),
			wantOut:   prev,
			wantCalls: calls("/ns/c", meshtest.LinkerdNft.LinkerdCommands()),
		},
		{
			name: "DEL does nothing (the rules go with the netns)",
			env:  map[string]string{"CNI_COMMAND": "DEL", "CNI_NETNS": "/ns/b", "CNI_ARGS": "K8S_POD_NAMESPACE=tl-mesh-istio-nftables"},
		},
		{
			name:    "no prevResult",
			env:     map[string]string{"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAMESPACE=default"},
			stdin:   conf(""),
			wantErr: "no prevResult",
		},
		{
			name:    "unknown command",
			env:     map[string]string{"CNI_COMMAND": "FROB"},
			wantErr: `unknown CNI_COMMAND "FROB"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []call
			out, err := run(tt.env, strings.NewReader(tt.stdin), func(netns string, argv []string) error {
				got = append(got, call{netns, argv})
				return nil
			})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantOut, string(out)); diff != "" {
				t.Errorf("output (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantCalls, got); diff != "" {
				t.Errorf("commands (-want +got):\n%s", diff)
			}
		})
	}
}

func calls(netns string, cmds [][]string) []call {
	var out []call
	for _, c := range cmds {
		out = append(out, call{netns, c})
	}
	return out
}

func TestRunFailureNamesThePod(t *testing.T) {
	_, err := run(map[string]string{"CNI_COMMAND": "ADD", "CNI_NETNS": "/ns/d", "CNI_ARGS": "K8S_POD_NAMESPACE=tl-mesh-istio-nftables-x;K8S_POD_NAME=echo"},
		strings.NewReader(conf(prev)), func(string, []string) error { return errors.New("nft: not found") })
	if err == nil || !strings.Contains(err.Error(), "istio-nftables rules for pod tl-mesh-istio-nftables-x/echo: nft: not found") {
		t.Fatalf("err = %v", err)
	}
}

func TestVersion(t *testing.T) {
	out, err := run(map[string]string{"CNI_COMMAND": "VERSION"}, strings.NewReader(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ SupportedVersions []string }
	if err := json.Unmarshal(out, &v); err != nil || !strings.Contains(strings.Join(v.SupportedVersions, ","), "1.0.0") {
		t.Errorf("VERSION = %s, %v", out, err)
	}
}

func TestRuleSetFor(t *testing.T) {
	for ns, want := range map[string]meshtest.RuleSet{
		"tl-mesh-istio-iptables-legacy":          meshtest.IstioLegacy,
		"tl-mesh-istio-iptables-nft-9f8e7d":      meshtest.IstioNft,
		"tl-mesh-istio-nftables-abc":             meshtest.IstioNftables,
		"tl-mesh-istio-tproxy-nftables-abc":      meshtest.IstioTPROXYNftables,
		"tl-mesh-linkerd-iptables-legacy-000001": meshtest.LinkerdLegacy,
		"tl-mesh-linkerd-iptables-nftx":          "",
		"tl-mesh-":                               "",
		"tl-e2e-istio-iptables-legacy":           "",
		"default":                                "",
	} {
		got, ok := ruleSetFor(ns)
		if got != want || ok != (want != "") {
			t.Errorf("ruleSetFor(%q) = %q, %v; want %q", ns, got, ok, want)
		}
	}
}

func TestParseCNIArgs(t *testing.T) {
	got, err := parseCNIArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web-0", "K8S_POD_INFRA_CONTAINER_ID": "abc"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, bad := range []string{"K8S_POD_NAMESPACE", "=x", "A=1;;B=2"} {
		if _, err := parseCNIArgs(bad); err == nil {
			t.Errorf("parseCNIArgs(%q) accepted", bad)
		}
	}
}

func FuzzParseCNIArgs(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=tl-mesh-istio-nftables;K8S_POD_NAME=a")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parseCNIArgs(s)
		if err != nil {
			return
		}
		for k := range m {
			if k == "" || strings.Contains(k, ";") {
				t.Fatalf("key %q from %q", k, s)
			}
		}
		if ns, ok := m["K8S_POD_NAMESPACE"]; ok {
			if rs, ok := ruleSetFor(ns); ok && !strings.HasPrefix(ns, namespacePrefix+string(rs)) {
				t.Fatalf("namespace %q got rule set %q", ns, rs)
			}
		}
	})
}
