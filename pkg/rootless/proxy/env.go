package proxy

import (
	"strings"

	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/egress"
)

// Env is the environment that sends a command's clients to the proxy at addr ("host:port"):
// ALL_PROXY with socks5h, so that curl and friends hand names to the proxy and the pod resolves them;
// HTTP_PROXY and HTTPS_PROXY, which Go's net/http, Python's requests and many others read instead of
// ALL_PROXY; each also in lower case, the only spelling some clients read (curl's http_proxy). They
// come last in os/exec's Env, so they override what the caller's environment had.
//
// NO_PROXY lists loopback and, with --local, the destinations without a port: names as written (a
// wildcard *.example.com as .example.com), addresses and CIDRs. Rules with a port are left out, since
// most clients ignore NO_PROXY ports and would bypass the proxy for every port; the proxy routes those
// itself, as it does everything else, so NO_PROXY only saves a hop.
func Env(addr string, f *egress.Filter) []string {
	socks := "socks5h://" + addr
	web := "http://" + addr
	noProxy := strings.Join(NoProxy(f), ",")
	return []string{
		"ALL_PROXY=" + socks, "all_proxy=" + socks,
		"HTTP_PROXY=" + web, "http_proxy=" + web,
		"HTTPS_PROXY=" + web, "https_proxy=" + web,
		"NO_PROXY=" + noProxy, "no_proxy=" + noProxy,
	}
}

// NoProxy is the NO_PROXY list Env sets.
func NoProxy(f *egress.Filter) []string {
	// Loopback is the command's own machine, which the proxy keeps local too.
	out := []string{"localhost", "127.0.0.0/8", "::1"}
	if f.Listed() != egress.Local {
		// --remote: what stays local is "everything else", which NO_PROXY cannot say.
		return out
	}
	for _, r := range f.Rules() {
		if r.Port != 0 {
			continue
		}
		s := r.String()
		if r.IsName() {
			s = strings.TrimPrefix(s, "*")
		}
		out = append(out, s)
	}
	return out
}
