package wire

import "fmt"

// The meshes and modes a Mesh hint names, as pkg/agent/mesh spells them in its messages.
const (
	MeshIstio   = "Istio"
	MeshLinkerd = "Linkerd"
	// MeshSidecar is the mode in which a proxy in the pod takes the pod's traffic with nat REDIRECT
	// rules in the pod's network namespace: the only mode a hint is sent for (the plugin refuses the
	// others before it asks the agent anything).
	MeshSidecar = "sidecar"
)

// The uids the meshes run their sidecar proxies as; their rules leave the proxy's own connections
// alone by that uid.
const (
	IstioProxyUID   = 1337
	LinkerdProxyUID = 2102
)

// Loopback is the name of the pod's loopback interface, where a sidecar's plaintext connection to the
// app runs.
const Loopback = "lo"

// Mesh is the service mesh the plugin saw in the pod's spec (pkg/agent/mesh), carried in the steal,
// mirror and dump requests. An agent with NET_RAW only cannot read the pod's nat rules, so this hint
// is all it knows of the mesh; nil means none was seen.
type Mesh struct {
	// Name is MeshIstio or MeshLinkerd.
	Name string `json:"name"`
	// Mode is MeshSidecar.
	Mode string `json:"mode"`
	// ProxyUID is the uid the sidecar proxy runs as: IstioProxyUID or LinkerdProxyUID.
	ProxyUID int `json:"proxyUid"`
}

// Validate checks the hint's shape; nil is valid (no mesh).
func (m *Mesh) Validate() error {
	if m == nil {
		return nil
	}
	if m.Name != MeshIstio && m.Name != MeshLinkerd {
		return fmt.Errorf("mesh %q: %w", m.Name, ErrUnsupported)
	}
	if m.Mode != MeshSidecar {
		return fmt.Errorf("mesh %s mode %q: %w", m.Name, m.Mode, ErrUnsupported)
	}
	if m.ProxyUID < 1 || m.ProxyUID > 1<<32-2 {
		return fmt.Errorf("mesh %s proxy uid %d: %w", m.Name, m.ProxyUID, ErrBadRequest)
	}
	return nil
}

// Sidecar reports a mesh whose proxy in the pod takes the pod's inbound traffic.
func (m *Mesh) Sidecar() bool { return m != nil && m.Mode == MeshSidecar }

// SniffInterface is where a capture of the pod's ports reads, given the mesh it is in: the one place
// that decides it, for the agent (which captures there) and the plugin (which says so).
//
// In a pod with a sidecar, the mesh's nat rules hand every inbound connection to a captured port to
// the proxy, which speaks mTLS on eth0 and opens its own plaintext connection to the app over lo:
// under Istio from 127.0.0.6 (or ::6) to podIP:P (127.0.0.1:P before 1.10), under Linkerd from the pod
// IP to podIP:P. A capture of those ports therefore reads lo alone, where each request shows once in
// plaintext, and skips eth0's copy, which is ciphertext. Without ports (a dump of everything) it reads
// every interface, as it does without a mesh. It returns "" for every interface, else the interface's
// name.
//
// An agent that can read the pod's rules may later decide from them instead; what it reads then
// takes the hint's place here.
func SniffInterface(mesh *Mesh, ports []int) string {
	if mesh.Sidecar() && len(ports) > 0 {
		return Loopback
	}
	return ""
}
