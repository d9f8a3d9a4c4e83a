package wire

import (
	"fmt"
	"strconv"
	"strings"
)

// KindDump is opened by the plugin: the agent captures in the pod's network namespace and writes the
// capture on the stream as pcapng, until the plugin closes it. It needs only NET_RAW.
const KindDump = "dump"

// maxFilterLen bounds a capture filter expression; tcpdump's are a line.
const maxFilterLen = 4096

// DumpSpec is what a dump captures, carried in the KindDump stream's request.
type DumpSpec struct {
	// Ports keeps packets to or from these ports (TCP or UDP); empty keeps every port.
	Ports []int `json:"ports,omitempty"`
	// Filter is a tcpdump-syntax expression, combined with Ports by "and".
	Filter string `json:"filter,omitempty"`
	// SnapLen is how many bytes of each frame to keep; 0 keeps whole frames.
	SnapLen int `json:"snapLen,omitempty"`
	// Mesh is the mesh the plugin saw in the pod's spec; nil when none. With Ports, a dump in a pod
	// with a sidecar reads lo only, where the proxy hands the app plaintext (SniffInterface).
	Mesh *Mesh `json:"mesh,omitempty"`
}

// Validate checks the spec's shape; the agent compiles the filter.
func (d *DumpSpec) Validate() error {
	for _, p := range d.Ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("port %d out of range 1-65535: %w", p, ErrBadRequest)
		}
	}
	if len(d.Filter) > maxFilterLen {
		return fmt.Errorf("filter longer than %d bytes: %w", maxFilterLen, ErrBadRequest)
	}
	if d.SnapLen < 0 || d.SnapLen > 262144 {
		return fmt.Errorf("snap length %d out of range 0-262144: %w", d.SnapLen, ErrBadRequest)
	}
	return d.Mesh.Validate()
}

// Expr is the capture filter the spec means, in tcpdump syntax: its ports (either protocol, either
// direction) and its expression, combined with "and"; empty captures everything.
func (d *DumpSpec) Expr() string {
	var ports []string
	for _, p := range d.Ports {
		ports = append(ports, "port "+strconv.Itoa(p))
	}
	var parts []string
	if len(ports) > 0 {
		parts = append(parts, "("+strings.Join(ports, " or ")+")")
	}
	if f := strings.TrimSpace(d.Filter); f != "" {
		parts = append(parts, "("+f+")")
	}
	return strings.Join(parts, " and ")
}

// CaptureExpr is the filter the agent compiles: Expr, and never the data connections of the agent's
// sessions, the loopback TCP ports in exclude. A dump that captured its own tunnel would feed on
// itself (each captured frame is sent as more frames on the same lo) and record the session, so the
// exclusion holds whatever the user asked for, an empty filter included.
func (d *DumpSpec) CaptureExpr(exclude []int) string {
	expr := d.Expr()
	if len(exclude) == 0 {
		return expr
	}
	ports := make([]string, 0, len(exclude))
	for _, p := range exclude {
		ports = append(ports, "tcp port "+strconv.Itoa(p))
	}
	own := "not ((host 127.0.0.1 or host ::1) and (" + strings.Join(ports, " or ") + "))"
	if expr == "" {
		return own
	}
	return expr + " and " + own
}
