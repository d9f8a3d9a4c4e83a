package wire

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/dlclark/regexp2"

	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
)

// Stream kinds of a steal. KindSteal is opened by the plugin and lives as long as the steal: the agent
// accepts it once the redirect is in place, sends StealEvents on it, and removes the redirect when it
// ends. KindIncoming is opened by the agent for each stolen connection (or, in a filtered steal, each
// connection to the developer's process); the plugin dials the local port and joins the two.
const (
	KindSteal    = "steal"
	KindIncoming = "incoming"
)

// Filter matching combines.
const (
	MatchAll = "all"
	MatchAny = "any"
)

// RegexOptions are the options every filter pattern is compiled with, on both sides, so that the
// plugin refuses before injection exactly the patterns the agent would refuse. Case-insensitive, as
// HTTP header names are; regexp2's default (.NET) syntax, for look-ahead.
const RegexOptions = regexp2.IgnoreCase

// HTTPFilter selects the HTTP requests a filtered steal takes. Headers see each header as one
// "Name: value" line; Paths see the request target (path and query); Methods are compared without
// case. Match is MatchAll or MatchAny over the filters given.
type HTTPFilter struct {
	Headers []string `json:"headers,omitempty"`
	Paths   []string `json:"paths,omitempty"`
	Methods []string `json:"methods,omitempty"`
	Match   string   `json:"match,omitempty"`
}

// Empty reports a filter that selects nothing by itself: the steal then takes whole connections.
func (f *HTTPFilter) Empty() bool {
	return f == nil || len(f.Headers)+len(f.Paths)+len(f.Methods) == 0
}

// Validate compiles every pattern, so a bad one is named before anything changes in the pod.
func (f *HTTPFilter) Validate() error {
	if f == nil {
		return nil
	}
	if f.Match != "" && f.Match != MatchAll && f.Match != MatchAny {
		return fmt.Errorf("match must be %q or %q, not %q", MatchAll, MatchAny, f.Match)
	}
	for _, p := range f.Headers {
		if _, err := regexp2.Compile(p, RegexOptions); err != nil {
			return fmt.Errorf("header filter %q: %w", p, err)
		}
	}
	for _, p := range f.Paths {
		if _, err := regexp2.Compile(p, RegexOptions); err != nil {
			return fmt.Errorf("path filter %q: %w", p, err)
		}
	}
	for _, m := range f.Methods {
		if !httpsyntax.IsToken(m) {
			return fmt.Errorf("method %q is not an HTTP method", m)
		}
	}
	return nil
}

// StealSpec is what the plugin asks the agent to steal, carried in the KindSteal stream's request.
type StealSpec struct {
	// Ports are the pod's ports to steal.
	Ports []int `json:"ports"`
	// Filter, when not empty, steals only the matching HTTP requests; the rest goes to the app.
	Filter *HTTPFilter `json:"filter,omitempty"`
	// StealProbes takes the kubelet's probes too.
	StealProbes bool `json:"stealProbes,omitempty"`
	// Probes are the pod's probes, which stay with the app unless StealProbes; nil when the pod
	// declares none (then no connection is a probe).
	Probes *Probes `json:"probes,omitempty"`
	// FlushConnections resets the busy connections already open to the ports too, at once, so that
	// their clients reconnect into the steal; their requests in flight fail. Without it only the
	// idle ones are reset (every steal and redirect mirror does that, for up to FlushWindow), and
	// busy ones go on to the app.
	FlushConnections bool `json:"flushConnections,omitempty"`
	// KeepOpen leaves every connection open before the steal alone, idle ones too: in a hostNetwork
	// pod they are the node's own (the kubelet's among them), not the pod's.
	KeepOpen bool `json:"keepOpen,omitempty"`
	// AllowUnownedRedirect accepts a redirect the kernel does not tie to the agent's life (no
	// nftables table owner flag, Linux before 5.12): without it the agent refuses such a steal
	// before installing anything (ErrUnsupported). The plugin's --allow-unowned-redirect.
	AllowUnownedRedirect bool `json:"allowUnownedRedirect,omitempty"`
	// PassedEvents asks for an event for every request passed to the app too, not only for the stolen
	// ones and warnings; at thousands of requests a second those cost the tunnel, the apiserver and
	// the kubelet more than the filter itself, so the plugin asks only when it shows them (-o json).
	PassedEvents bool `json:"passedEvents,omitempty"`
	// DetectTimeout bounds the wait for a client's first bytes (protocol and probe detection); a
	// server-first protocol says nothing first and is then taken as not HTTP.
	DetectTimeout Duration `json:"detectTimeoutMs,omitempty"`
	// HeadTimeout bounds the arrival of each HTTP request head of a filtered steal, from its first
	// byte to its empty line; 0 means DefaultHeadTimeout.
	HeadTimeout Duration `json:"headTimeoutMs,omitempty"`
	// Mesh is the mesh the plugin saw in the pod's spec; nil when none.
	Mesh *Mesh `json:"mesh,omitempty"`
}

// DefaultHeadTimeout is a filtered steal's head deadline when the spec gives none: what a slow client
// gets to finish a request head before the agent answers 408 and closes, as an app's own
// slow-header protection would (nginx's client_header_timeout is 60 s, Go's is unset; 30 s keeps
// every real client and cuts slowloris).
const DefaultHeadTimeout = 30 * time.Second

// IncomingOpenTimeout is how long a filtered steal waits for the plugin to answer an incoming open.
// Within it a refusal means the local process could not be reached, and the request goes to the app;
// past it the open is abandoned (the agent never writes on it) and the request goes to the app too.
// Once the open is accepted the request may have reached the local process, so it never goes to the
// app: if the local process then fails, the client gets a 502 (docs/protocol.md, "Fallback").
const IncomingOpenTimeout = time.Second

// Validate checks the spec's shape and compiles its filter.
func (s *StealSpec) Validate() error {
	if len(s.Ports) == 0 {
		return fmt.Errorf("steal without ports: %w", ErrBadRequest)
	}
	seen := map[int]bool{}
	for _, p := range s.Ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("port %d out of range 1-65535: %w", p, ErrBadRequest)
		}
		if seen[p] {
			return fmt.Errorf("port %d given twice: %w", p, ErrBadRequest)
		}
		seen[p] = true
	}
	if s.DetectTimeout < 0 {
		return fmt.Errorf("negative detect timeout: %w", ErrBadRequest)
	}
	if s.HeadTimeout < 0 {
		return fmt.Errorf("negative head timeout: %w", ErrBadRequest)
	}
	if err := s.Filter.Validate(); err != nil {
		return fmt.Errorf("%w: %w", err, ErrBadRequest)
	}
	if err := s.Mesh.Validate(); err != nil {
		return err
	}
	return s.Probes.Validate()
}

// Kinds of a declared probe.
const (
	// ProbeHTTP is an httpGet probe over plain HTTP.
	ProbeHTTP = "http"
	// ProbeGRPC is a gRPC probe: an h2c POST to /grpc.health.v1.Health/Check.
	ProbeGRPC = "grpc"
	// ProbeHTTPS is an httpGet probe over TLS: the agent cannot read it, so it tells it by its
	// source and port.
	ProbeHTTPS = "https"
	// ProbeTCP is a tcpSocket probe: a connection that sends nothing, told by its source and port.
	ProbeTCP = "tcp"
)

// Probes are the kubelet's probes of a pod, as the plugin reads them from the pod's spec: a
// connection is a probe when it comes from the kubelet's address as the pod sees it and matches
// one of them (ephemeral/probe).
type Probes struct {
	// Declared are the probes the pod's containers declare, named ports resolved; in an Istio pod,
	// the app probes its sidecar runs for the kubelet (ISTIO_KUBE_APP_PROBERS).
	Declared []Probe `json:"declared,omitempty"`
	// Sources are the probes' source addresses that the agent cannot see for itself: the node's
	// (status.hostIPs), and 127.0.0.6 in an Istio pod, where pilot-agent sends them. The agent adds
	// the pod's default gateways (the node's end of the pod's route, with a bridge CNI) and any
	// source of a declared probe sent with the kubelet's User-Agent.
	Sources []string `json:"sources,omitempty"`
}

// Probe is one declared probe that reaches a pod port.
type Probe struct {
	Port int    `json:"port"`
	Kind string `json:"kind"`
	// Path is the request target the kubelet sends (path and query), for http and grpc.
	Path string `json:"path,omitempty"`
	// Headers are the httpGet probe's httpHeaders: the kubelet sends each as given, and a
	// User-Agent or Accept among them replaces its own.
	Headers []ProbeHeader `json:"headers,omitempty"`
}

// ProbeHeader is one of a probe's httpHeaders.
type ProbeHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Validate checks the probes' shape.
func (p *Probes) Validate() error {
	if p == nil {
		return nil
	}
	for _, d := range p.Declared {
		if d.Port < 1 || d.Port > 65535 {
			return fmt.Errorf("probe port %d out of range 1-65535: %w", d.Port, ErrBadRequest)
		}
		switch d.Kind {
		case ProbeHTTP, ProbeGRPC:
			if !strings.HasPrefix(d.Path, "/") {
				return fmt.Errorf("%s probe on port %d: path %q does not start with /: %w", d.Kind, d.Port, d.Path, ErrBadRequest)
			}
		case ProbeHTTPS, ProbeTCP:
		default:
			return fmt.Errorf("probe on port %d: kind %q: %w", d.Port, d.Kind, ErrBadRequest)
		}
		for _, h := range d.Headers {
			if !httpsyntax.IsToken(h.Name) {
				return fmt.Errorf("probe on port %d: header name %q: %w", d.Port, h.Name, ErrBadRequest)
			}
		}
	}
	for _, s := range p.Sources {
		if net.ParseIP(s) == nil {
			return fmt.Errorf("probe source %q is not an IP address: %w", s, ErrBadRequest)
		}
	}
	return nil
}

// Steal event kinds.
const (
	// EventReady is the first event: the redirect is in place.
	EventReady = "ready"
	// EventRequest is one HTTP request of a filtered steal (or a probe passed to the app).
	EventRequest = "request"
	// EventConnection is one connection of a whole-port steal, sent when it ends.
	EventConnection = "connection"
	// EventWarning is something the developer should know, e.g. a request the local process refused.
	EventWarning = "warning"
	// EventFlush reports the connections to Port that were open before the redirect, after a look
	// that changed something: Flushed idle ones were reset (their clients reconnect into the
	// redirect), Reset busy ones were reset (FlushConnections: their requests in flight failed),
	// Left busy ones still go to the app. Done marks the port's last one: nothing left, or
	// FlushWindow is over.
	EventFlush = "flush"
	// EventDrain reports the end of the connections the agent relayed to the app when the steal
	// ended: Drained closed gracefully (after an HTTP/1 "Connection: close" or an HTTP/2 GOAWAY, or
	// by their clients), Reset were still open after DrainWindow and were closed.
	EventDrain = "drain"
	// EventShared (right after Ready) names the other sessions that filter the same Port
	// (Sessions): each request goes to the first registered session whose filter matches it.
	EventShared = "shared"
)

// FlushWindow is how long a steal keeps looking for the open connections it left with the app
// because they were busy, to reset each once it is idle.
const FlushWindow = 30 * time.Second

// DrainWindow bounds the drain at a steal's end: how long the connections the agent relays to the
// app get to end gracefully before they are closed.
const DrainWindow = 30 * time.Second

// StealEvent is one line of what a steal did, sent by the agent on the KindSteal stream.
type StealEvent struct {
	Kind string `json:"kind"`
	// Port is the pod port the client connected to.
	Port int `json:"port,omitempty"`
	// Peer is the client's address as the pod saw it.
	Peer     string   `json:"peer,omitempty"`
	Proto    string   `json:"proto,omitempty"`
	Method   string   `json:"method,omitempty"`
	Path     string   `json:"path,omitempty"`
	Status   int      `json:"status,omitempty"`
	Stolen   bool     `json:"stolen,omitempty"`
	Duration Duration `json:"durationMs,omitempty"`
	// BytesIn is what the client sent, BytesOut what it received.
	BytesIn  int64  `json:"bytesIn,omitempty"`
	BytesOut int64  `json:"bytesOut,omitempty"`
	Message  string `json:"message,omitempty"`
	// Flush's and Drain's counts (see EventFlush and EventDrain).
	Flushed int  `json:"flushed,omitempty"`
	Reset   int  `json:"reset,omitempty"`
	Left    int  `json:"left,omitempty"`
	Drained int  `json:"drained,omitempty"`
	Done    bool `json:"done,omitempty"`
	// KernelOwned (Ready) says whether the kernel owns the table (false: a table that outlives a
	// killed agent container until the next sweep).
	KernelOwned bool `json:"kernelOwned,omitempty"`
	// ProbeSources (Ready) are the addresses the agent takes for the kubelet's: the spec's Probes
	// sources and the pod's default gateways. Connections from them to a port with a tcpSocket or
	// HTTPS probe go to the app.
	ProbeSources []string `json:"probeSources,omitempty"`
	// Sessions (Shared) are the other sessions filtering Port, in the order they registered.
	Sessions []PortSession `json:"sessions,omitempty"`
}

// PortSession is another session stealing the same pod port.
type PortSession struct {
	ID   string `json:"id"`
	User string `json:"user,omitempty"`
	Host string `json:"host,omitempty"`
	// Filter is the session's filter as Describe writes it; empty for a whole-port steal.
	Filter string    `json:"filter,omitempty"`
	Since  time.Time `json:"since"`
}

// Describe is the filter in one line, for messages naming a session: its patterns as the flags
// gave them, "any of" for MatchAny; empty for an empty filter.
func (f *HTTPFilter) Describe() string {
	if f.Empty() {
		return ""
	}
	var parts []string
	for _, h := range f.Headers {
		parts = append(parts, "header "+strconv.Quote(h))
	}
	for _, p := range f.Paths {
		parts = append(parts, "path "+strconv.Quote(p))
	}
	if len(f.Methods) > 0 {
		parts = append(parts, "method "+strings.Join(f.Methods, "|"))
	}
	if f.Match == MatchAny && len(parts) > 1 {
		return "any of " + strings.Join(parts, ", ")
	}
	return strings.Join(parts, " and ")
}

// validateIncoming checks an incoming stream's request: the pod port and the client address.
func (r *OpenRequest) validateIncoming() error {
	if r.Port < 1 || r.Port > 65535 {
		return fmt.Errorf("incoming stream for port %d: %w", r.Port, ErrBadRequest)
	}
	if r.Peer != "" {
		if _, _, err := net.SplitHostPort(r.Peer); err != nil {
			return fmt.Errorf("incoming stream peer %q: %w", r.Peer, ErrBadRequest)
		}
	}
	return nil
}

// FilterMatcher is a compiled HTTPFilter; it is safe for concurrent use. Both sides use it: the
// agent per request, the plugin to warn about the probes a filter would take.
type FilterMatcher struct {
	headers, paths []*regexp2.Regexp
	methods        []string
	all            bool
}

// MatchTimeout bounds one pattern on one input. regexp2 backtracks (that is what buys look-ahead),
// so a pathological pattern could otherwise stall every request on the port; a timed-out pattern
// counts as not matching, which sends the request to the app.
const MatchTimeout = 50 * time.Millisecond

// Compile compiles the filter; nil for an empty one.
func (f *HTTPFilter) Compile() (*FilterMatcher, error) { return f.compile(MatchTimeout) }

func (f *HTTPFilter) compile(timeout time.Duration) (*FilterMatcher, error) {
	if f.Empty() {
		return nil, nil
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	m := &FilterMatcher{all: f.Match != MatchAny, methods: f.Methods}
	for _, p := range f.Headers {
		re := regexp2.MustCompile(p, RegexOptions)
		re.MatchTimeout = timeout
		m.headers = append(m.headers, re)
	}
	for _, p := range f.Paths {
		re := regexp2.MustCompile(p, RegexOptions)
		re.MatchTimeout = timeout
		m.paths = append(m.paths, re)
	}
	return m, nil
}

// Match reports whether a request matches. Each header pattern is a filter of its own and matches
// when one "Name: value" line does; each path pattern is one, matched against the request target
// (path and query); the methods together are one more (the method is one of them, without case).
// With MatchAll every filter must match, with MatchAny one is enough.
func (m *FilterMatcher) Match(method, target string, headers []string) bool {
	for _, re := range m.headers {
		ok := false
		for _, h := range headers {
			if matchString(re, h) {
				ok = true
				break
			}
		}
		if done, result := m.verdict(ok); done {
			return result
		}
	}
	for _, re := range m.paths {
		if done, result := m.verdict(matchString(re, target)); done {
			return result
		}
	}
	if len(m.methods) > 0 {
		ok := false
		for _, x := range m.methods {
			ok = ok || strings.EqualFold(x, method)
		}
		if done, result := m.verdict(ok); done {
			return result
		}
	}
	return m.all
}

// verdict short-circuits: a miss decides "all", a hit decides "any".
func (m *FilterMatcher) verdict(ok bool) (done, result bool) {
	if m.all {
		return !ok, false
	}
	return ok, true
}

func matchString(re *regexp2.Regexp, s string) bool {
	ok, err := re.MatchString(s)
	return err == nil && ok
}
