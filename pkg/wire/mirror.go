package wire

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/internal/httpsyntax"
)

// KindMirror is opened by the plugin and lives as long as the mirror: the agent watches the ports'
// incoming traffic (sniffing it, or sitting in its path in redirect mode), sends MirrorEvents on the
// stream and replays each selected request to the copy's destination. When the destination is the
// developer's machine the agent opens a KindMirrored stream per mirrored connection, and the plugin
// joins it to the local port; the agent reads the answers itself (status, --diff).
const (
	KindMirror   = "mirror"
	KindMirrored = "mirrored"
)

// MirrorWriteInterval spaces the tunnel's writes on both ends while a mirror runs (see
// Session.SetWriteInterval): each write is a message for the apiserver, the kubelet and the runtime
// to relay, and a mirror sends thousands of small copies and answers a second. At 2,000 requests/s
// the three made 22 read and write calls per copied request before (0.70 cores), 13 with whole SPDY
// frames and 1 ms, and 3.4 with 4 ms (0.19 cores). The interval adds to a copy's round trip, which
// is harmless only because HTTP/1 copies are pipelined: with each copy waiting for the answer to the
// one before, 4 ms left a third to a half of the copies too slow.
const MirrorWriteInterval = 4 * time.Millisecond

// MirrorHeader marks every HTTP copy a mirror sends (in the HTTP/1 head; in the h2c HEADERS the
// agent encodes afresh), its value the agent's session id. A mirror never copies a request that
// carries it, whatever its value: a destination that routes back to a mirrored pod (a Service that
// selects it, reached through hairpin NAT, which hides the copy's source) would otherwise have each
// copy copied again, without end. Copies of other protocols carry no mark; the plugin refuses a
// destination whose endpoints include the mirrored pod before the mirror starts.
const MirrorHeader = "X-Trafficlab-Mirror"

// Mirror modes.
const (
	// MirrorSniff watches with a packet socket (NET_RAW only); the pod's traffic is never touched.
	MirrorSniff = "sniff"
	// MirrorRedirect puts the agent in the path with the steal's nftables redirect (NET_ADMIN): every
	// byte still goes to the app, and a copy is teed from what the agent relays.
	MirrorRedirect = "redirect"
)

// MirrorSpec is what a mirror copies and where, carried in the KindMirror stream's request.
type MirrorSpec struct {
	Ports []int  `json:"ports"`
	Mode  string `json:"mode,omitempty"`
	// Filter, when not empty, mirrors only the matching HTTP requests.
	Filter *HTTPFilter `json:"filter,omitempty"`
	// To is a host:port the agent dials from the pod for the copy; empty sends it to the plugin.
	To string `json:"to,omitempty"`
	// Percent of the selected requests (and non-HTTP connections) that are mirrored; 0 means all.
	Percent int `json:"percent,omitempty"`
	// Diff compares each copy's response with the pod's: status, the DiffHeaders, and the body.
	Diff        bool     `json:"diff,omitempty"`
	DiffHeaders []string `json:"diffHeaders,omitempty"`
	// Probes are the pod's probes, which are never copied (as in StealSpec).
	Probes *Probes `json:"probes,omitempty"`
	// AllowUnownedRedirect is StealSpec's, for the redirect mode: without it the agent refuses a
	// redirect the kernel does not tie to its life.
	AllowUnownedRedirect bool `json:"allowUnownedRedirect,omitempty"`
	// Mesh is the mesh the plugin saw in the pod's spec; nil when none. A sniffing mirror in a pod
	// with a sidecar reads lo, where the proxy hands the app plaintext (SniffInterface).
	Mesh *Mesh `json:"mesh,omitempty"`
	// KeepOpen is StealSpec's, for the redirect mode.
	KeepOpen bool `json:"keepOpen,omitempty"`
}

// Validate checks the spec's shape and compiles its filter.
func (m *MirrorSpec) Validate() error {
	if len(m.Ports) == 0 {
		return fmt.Errorf("mirror without ports: %w", ErrBadRequest)
	}
	for _, p := range m.Ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("port %d out of range 1-65535: %w", p, ErrBadRequest)
		}
	}
	switch m.Mode {
	case "", MirrorSniff, MirrorRedirect:
	default:
		return fmt.Errorf("mirror mode %q: %w", m.Mode, ErrUnsupported)
	}
	if m.Percent < 0 || m.Percent > 100 {
		return fmt.Errorf("percent %d out of range 0-100: %w", m.Percent, ErrBadRequest)
	}
	if m.To != "" {
		host, port, err := net.SplitHostPort(m.To)
		if err != nil || host == "" {
			return fmt.Errorf("mirror destination %q is not host:port: %w", m.To, ErrBadRequest)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return fmt.Errorf("mirror destination %q: port must be 1-65535: %w", m.To, ErrBadRequest)
		}
	}
	for _, h := range m.DiffHeaders {
		if !httpsyntax.IsToken(h) {
			return fmt.Errorf("diff header %q is not a header name: %w", h, ErrBadRequest)
		}
	}
	if err := m.Filter.Validate(); err != nil {
		return fmt.Errorf("%w: %w", err, ErrBadRequest)
	}
	if err := m.Mesh.Validate(); err != nil {
		return err
	}
	return m.Probes.Validate()
}

// Sniffs reports whether the mirror captures packets rather than redirecting.
func (m *MirrorSpec) Sniffs() bool { return m.Mode == "" || m.Mode == MirrorSniff }

// Mirror event kinds; EventReady and EventWarning are the steal's.
const (
	// EventMirrored is one mirrored HTTP request, sent when the copy's response is in (and, with
	// Diff, the pod's too).
	EventMirrored = "mirrored"
	// EventCopied is one mirrored connection of a protocol that is not HTTP, sent when it ends.
	EventCopied = "copied"
	// EventStats is the last event: the counts.
	EventStats = "stats"
)

// MirrorEvent is one line of what a mirror did, sent by the agent on the KindMirror stream.
type MirrorEvent struct {
	Kind string `json:"kind"`
	Port int    `json:"port,omitempty"`
	// Peer is the pod's client whose request was copied.
	Peer   string `json:"peer,omitempty"`
	Proto  string `json:"proto,omitempty"`
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	// Status is the copy's answer; PodStatus the pod's (with Diff).
	Status    int `json:"status,omitempty"`
	PodStatus int `json:"podStatus,omitempty"`
	// Duration is the copy's response time.
	Duration Duration `json:"durationMs,omitempty"`
	// BytesIn is what was sent to the copy, BytesOut what it answered.
	BytesIn  int64 `json:"bytesIn,omitempty"`
	BytesOut int64 `json:"bytesOut,omitempty"`
	// Differences lists how the copy's response differs from the pod's, one item per difference.
	Differences []string `json:"differences,omitempty"`
	// Error says why a mirrored request got no answer from the copy.
	Error   string       `json:"error,omitempty"`
	Message string       `json:"message,omitempty"`
	Stats   *MirrorStats `json:"stats,omitempty"`
}

// MirrorStats are a mirror's counts. Requests are HTTP requests; a connection of another protocol
// counts as one request.
type MirrorStats struct {
	Connections int64 `json:"connections"`
	Requests    int64 `json:"requests"`
	// Probes are the kubelet's, never copied; Unselected did not match the filter; SampledOut
	// matched but fell outside Percent.
	Probes     int64 `json:"probes,omitempty"`
	Unselected int64 `json:"unselected,omitempty"`
	SampledOut int64 `json:"sampledOut,omitempty"`
	Mirrored   int64 `json:"mirrored"`
	// Answered got a complete response from the copy; Differ's response differed from the pod's.
	Answered int64 `json:"answered"`
	Differ   int64 `json:"differ,omitempty"`
	// Not mirrored, by cause: open before the mirror began (a non-HTTP or h2c connection whose start
	// was not seen); bytes lost by the capture or the tee; the copy slower than the traffic; the
	// destination refused; upgrades (WebSocket) that cannot be replayed; larger than the body limit.
	DroppedMidStream int64 `json:"droppedMidStream,omitempty"`
	DroppedGap       int64 `json:"droppedGap,omitempty"`
	DroppedSlow      int64 `json:"droppedSlow,omitempty"`
	DroppedRefused   int64 `json:"droppedRefused,omitempty"`
	DroppedUpgrade   int64 `json:"droppedUpgrade,omitempty"`
	DroppedTooLarge  int64 `json:"droppedTooLarge,omitempty"`
	// DroppedOverBudget were not copied because the agent was over its memory budget
	// (--agent-memory-budget), the pod's own traffic untouched.
	DroppedOverBudget int64 `json:"droppedOverBudget,omitempty"`
	// Failed were sent but the copy's answer never came (error or timeout).
	Failed int64 `json:"failed,omitempty"`
	// SkippedCopies carried MirrorHeader: a mirror's own copies, come back to a mirrored port.
	SkippedCopies int64 `json:"skippedCopies,omitempty"`
	// DroppedMalformed are h2c requests without a valid :method or :path, which the app's server
	// must refuse (RFC 9113 8.1.1): there is nothing to replay.
	DroppedMalformed int64 `json:"droppedMalformed,omitempty"`
	// DroppedAway were not copied because the plugin, which takes the copies, was away (a lost
	// tunnel within its reconnect grace).
	DroppedAway int64 `json:"droppedAway,omitempty"`
	// Kernel counts of the capture (sniff mode): frames queued to the agent and frames the kernel
	// dropped because the agent's ring was full.
	KernelReceived uint64 `json:"kernelReceived,omitempty"`
	KernelDropped  uint64 `json:"kernelDropped"`
	// EventsDropped are events that found the event queue full.
	EventsDropped int64 `json:"eventsDropped,omitempty"`
	// AgentMaxRSS is the agent session's peak resident memory, in bytes.
	AgentMaxRSS int64 `json:"agentMaxRss,omitempty"`
	// Partial marks counts sent while the mirror runs (once a second), not at its end: what the
	// plugin reports if the final counts are late, as they are on a node too busy to end promptly.
	Partial bool `json:"partial,omitempty"`
}

// Dropped sums the copies not made, whatever the cause.
func (s *MirrorStats) Dropped() int64 {
	return s.DroppedMidStream + s.DroppedGap + s.DroppedSlow + s.DroppedRefused + s.DroppedUpgrade + s.DroppedTooLarge +
		s.DroppedOverBudget + s.DroppedMalformed + s.DroppedAway
}

// Summary is the one line printed when a mirror ends.
func (s *MirrorStats) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s seen on %s, %d mirrored, %d answered", plural(s.Requests, "request"), plural(s.Connections, "connection"), s.Mirrored, s.Answered)
	if s.Differ > 0 {
		fmt.Fprintf(&b, ", %d differed", s.Differ)
	}
	var not []string
	for _, c := range []struct {
		n    int64
		what string
	}{
		{s.Probes, "kubelet probes"}, {s.SkippedCopies, "copies of a mirror (" + MirrorHeader + ")"},
		{s.Unselected, "not matching the filter"}, {s.SampledOut, "sampled out"},
		{s.DroppedMidStream, "open before the mirror"}, {s.DroppedGap, "bytes lost"},
		{s.DroppedOverBudget, "agent over its memory budget"},
		{s.DroppedSlow, "copy too slow"}, {s.DroppedRefused, "refused by the destination"},
		{s.DroppedUpgrade, "protocol upgrades"}, {s.DroppedTooLarge, "too large"}, {s.DroppedMalformed, "malformed"},
		{s.DroppedAway, "while the plugin was away"},
		{s.Failed, "no answer from the copy"},
	} {
		if c.n > 0 {
			not = append(not, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	if len(not) > 0 {
		fmt.Fprintf(&b, "; not mirrored or unanswered: %s", strings.Join(not, ", "))
	}
	if s.KernelReceived > 0 || s.KernelDropped > 0 {
		fmt.Fprintf(&b, "; kernel dropped %d of %d packets", s.KernelDropped, s.KernelReceived+s.KernelDropped)
	}
	return b.String()
}

func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
