// Package probe decides, in one place for steal and mirror, whether a request is one of the
// kubelet's probes: those are the pod's business (a probe answered by a laptop, or not at all,
// restarts or unreadies the pod), so a steal passes them to the app unless told otherwise and a
// mirror never copies them.
package probe

import (
	"net/netip"

	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
)

// Declared is one probe of the pod's spec that the kubelet sends as an HTTP request: an httpGet
// probe, or a gRPC probe (a POST to /grpc.health.v1.Health/Check).
type Declared struct {
	// Port is the container port the probe is sent to.
	Port uint16
	// Path is the httpGet path ("/" when the spec leaves it empty), or the gRPC health path.
	Path string
	// Headers are the httpGet probe's httpHeaders, which the kubelet sends as given; a
	// User-Agent among them replaces its own.
	Headers []Header
}

// Header is one field of a declared probe.
type Header struct {
	Name, Value string
}

// Request is what is known of a request when it is classified. The steal builds it with
// httpx.RequestHead.ProbeRequest, the mirror from the capture's Request.
type Request struct {
	// Source is the address the connection came from: the node's, for the kubelet.
	Source netip.AddrPort
	// Port is the pod port the connection was sent to.
	Port uint16
	// Path is the request's path and query.
	Path string
	// Header are the request's header fields as "Name: value" lines, in the order sent (the form
	// the capture keeps and the steal filters match).
	Header []string
}

// Rule decides which requests are the kubelet's probes. Its zero value is the rule every steal and
// mirror uses today.
type Rule struct {
	// Declared are the pod's HTTP and gRPC probes. The plugin does not send them to the agent yet
	// (it sends only --steal-probes), so the rule does not read them; a rule that checks the
	// source address against the kubelet's and the request against a declared probe extends
	// IsProbe here, with the same callers.
	Declared []Declared
}

// kubeletAgent starts the User-Agent of the kubelet's HTTP and gRPC probes: "kube-probe/1.33"
// (gRPC probes add " grpc-go/...").
const kubeletAgent = "kube-probe/"

// IsProbe reports whether q is one of the kubelet's probes: any User-Agent field starts with
// "kube-probe/", field name and value compared case-insensitively. Any field rather than the
// first: User-Agent is a singleton field (RFC 9110 10.1.5), so a request with two is malformed and
// the app may read either; the kubelet sends one, so the two readings agree on every real probe,
// and where they differ "any" errs on the side that cannot restart the pod (the request goes to
// the app rather than to the developer).
func (r Rule) IsProbe(q Request) bool {
	for _, line := range q.Header {
		if v, ok := httpsyntax.FieldLineValue(line, "User-Agent"); ok && httpsyntax.HasPrefixFold(v, kubeletAgent) {
			return true
		}
	}
	return false
}
