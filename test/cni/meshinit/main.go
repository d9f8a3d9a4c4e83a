// Command meshinit is the test cluster's mesh CNI plugin: chained after the bridge plugin, it
// installs a service mesh's real capture rules in a pod's network namespace from the host before
// the pod's containers start, the way istio-cni and linkerd-cni do, for the pods of the namespaces
// the mesh e2e names after a rule set (tl-mesh-<rule set>[-<suffix>], the rule sets of
// internal/meshtest: Istio's through the pinned istio-iptables, Linkerd's proxy-init commands, with
// Debian's iptables-legacy or iptables-nft, or Istio's native nftables). Every other pod, and every
// DEL (the namespace goes with the pod), passes through untouched: the previous plugin's result is
// this plugin's result.
//
// hack/cluster/up.sh installs it in the cluster's CNI bin dir and chains it in the conflist:
//
//	{"type": "trafficlab-meshinit", "istioIptables": "/path/to/istio-iptables"}
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/trafficlab/kubectl-trafficlab/internal/meshtest"
)

// namespacePrefix starts the name of every namespace whose pods get a mesh's rules.
const namespacePrefix = "tl-mesh-"

// netConf is the part of the plugin's network configuration it reads.
type netConf struct {
	CNIVersion    string          `json:"cniVersion"`
	IstioIptables string          `json:"istioIptables"`
	PrevResult    json.RawMessage `json:"prevResult"`
}

// cniError is the error a CNI plugin prints on stdout (the spec's well-known code 999: other).
type cniError struct {
	CNIVersion string `json:"cniVersion"`
	Code       int    `json:"code"`
	Msg        string `json:"msg"`
}

func main() {
	env := map[string]string{}
	for _, k := range []string{"CNI_COMMAND", "CNI_NETNS", "CNI_ARGS", "CNI_CONTAINERID"} {
		env[k] = os.Getenv(k)
	}
	out, err := run(env, os.Stdin, runInNetns)
	if err != nil {
		b, _ := json.Marshal(cniError{CNIVersion: "1.0.0", Code: 999, Msg: err.Error()})
		os.Stdout.Write(append(b, '\n'))
		os.Exit(1)
	}
	os.Stdout.Write(out)
}

// runner runs one command line inside the network namespace at path.
type runner func(netnsPath string, argv []string) error

// run is one plugin invocation: env holds the CNI_ variables, stdin the network configuration; it
// returns what to print.
func run(env map[string]string, stdin io.Reader, runIn runner) ([]byte, error) {
	switch env["CNI_COMMAND"] {
	case "VERSION":
		// the spec versions whose ADD result this plugin passes through
		return json.Marshal(map[string]any{"cniVersion": "1.0.0", "supportedVersions": []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}})
	case "DEL", "CHECK", "GC", "STATUS":
		return nil, nil
	case "ADD":
	default:
		return nil, fmt.Errorf("trafficlab-meshinit: unknown CNI_COMMAND %q", env["CNI_COMMAND"])
	}
	var conf netConf
	if err := json.NewDecoder(stdin).Decode(&conf); err != nil {
		return nil, fmt.Errorf("trafficlab-meshinit: read the network configuration: %w", err)
	}
	if len(conf.PrevResult) == 0 || string(conf.PrevResult) == "null" {
		return nil, fmt.Errorf("trafficlab-meshinit: no prevResult: chain it after the plugin that sets up the interface")
	}
	args, err := parseCNIArgs(env["CNI_ARGS"])
	if err != nil {
		return nil, err
	}
	ns := args["K8S_POD_NAMESPACE"]
	if rs, ok := ruleSetFor(ns); ok {
		for _, argv := range commands(rs, conf.IstioIptables) {
			if err := runIn(env["CNI_NETNS"], argv); err != nil {
				return nil, fmt.Errorf("trafficlab-meshinit: %s rules for pod %s/%s: %w", rs, ns, args["K8S_POD_NAME"], err)
			}
		}
	}
	return conf.PrevResult, nil
}

// parseCNIArgs reads CNI_ARGS: KEY=VALUE pairs separated by semicolons.
func parseCNIArgs(s string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("trafficlab-meshinit: CNI_ARGS element %q is not KEY=VALUE", kv)
		}
		out[k] = v
	}
	return out, nil
}

// ruleSetFor is the rule set a namespace's pods get: tl-mesh-<rule set>, alone or followed by
// "-<suffix>"; false for every other namespace.
func ruleSetFor(ns string) (meshtest.RuleSet, bool) {
	rest, ok := strings.CutPrefix(ns, namespacePrefix)
	if !ok {
		return "", false
	}
	var best meshtest.RuleSet
	for _, rs := range meshtest.All {
		if (rest == string(rs) || strings.HasPrefix(rest, string(rs)+"-")) && len(rs) > len(best) {
			best = rs
		}
	}
	return best, best != ""
}

// commands are the command lines that install rs: istio-iptables with istio-cni's flags, or
// proxy-init's iptables commands.
func commands(rs meshtest.RuleSet, istioIptables string) [][]string {
	if args := rs.IstioArgs(); args != nil {
		return [][]string{append([]string{istioIptables}, args...)}
	}
	return rs.LinkerdCommands()
}

// runInNetns runs argv in the network namespace at path (nsenter, from util-linux) with the
// host's sbin directories on PATH, where Debian's iptables and nft are.
func runInNetns(path string, argv []string) error {
	if path == "" {
		return fmt.Errorf("no CNI_NETNS")
	}
	cmd := exec.Command("nsenter", append([]string{"--net=" + path, "--"}, argv...)...)
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
