package wire

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestMeshValidate: the hint names a mesh and mode the agent knows, with a real uid; an absent hint is
// no mesh. A bad hint refuses the whole request, whichever verb carries it.
func TestMeshValidate(t *testing.T) {
	istio := &Mesh{Name: MeshIstio, Mode: MeshSidecar, ProxyUID: IstioProxyUID}
	for _, tt := range []struct {
		name string
		mesh *Mesh
		want error
	}{
		{name: "none"},
		{name: "Istio", mesh: istio},
		{name: "Linkerd", mesh: &Mesh{Name: MeshLinkerd, Mode: MeshSidecar, ProxyUID: LinkerdProxyUID}},
		{name: "unknown mesh", mesh: &Mesh{Name: "Consul", Mode: MeshSidecar, ProxyUID: 100}, want: ErrUnsupported},
		{name: "ambient is never sent", mesh: &Mesh{Name: MeshIstio, Mode: "ambient", ProxyUID: IstioProxyUID}, want: ErrUnsupported},
		{name: "root proxy uid", mesh: &Mesh{Name: MeshIstio, Mode: MeshSidecar}, want: ErrBadRequest},
		{name: "uid -1", mesh: &Mesh{Name: MeshIstio, Mode: MeshSidecar, ProxyUID: 1<<32 - 1}, want: ErrBadRequest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, r := range []interface{ Validate() error }{
				&StealSpec{Ports: []int{80}, Mesh: tt.mesh},
				&MirrorSpec{Ports: []int{80}, Mesh: tt.mesh},
				&DumpSpec{Ports: []int{80}, Mesh: tt.mesh},
			} {
				if err := r.Validate(); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
					t.Errorf("%T.Validate() = %v, want %v", r, err, tt.want)
				}
			}
		})
	}
}

// TestSniffInterface: a capture of ports in a pod with a sidecar reads lo only (the proxy's plaintext
// connection to the app; eth0 carries mTLS); a capture of everything, or in a pod without a mesh,
// reads every interface.
func TestSniffInterface(t *testing.T) {
	istio := &Mesh{Name: MeshIstio, Mode: MeshSidecar, ProxyUID: IstioProxyUID}
	linkerd := &Mesh{Name: MeshLinkerd, Mode: MeshSidecar, ProxyUID: LinkerdProxyUID}
	for _, tt := range []struct {
		name  string
		mesh  *Mesh
		ports []int
		want  string
	}{
		{name: "no mesh, ports", ports: []int{8080}, want: ""},
		{name: "no mesh, everything", want: ""},
		{name: "Istio, ports", mesh: istio, ports: []int{8080, 9090}, want: "lo"},
		{name: "Linkerd, ports", mesh: linkerd, ports: []int{8080}, want: "lo"},
		{name: "Istio, everything", mesh: istio, want: ""},
		{name: "not a sidecar mode", mesh: &Mesh{Name: MeshIstio, Mode: "ambient"}, ports: []int{8080}, want: ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := SniffInterface(tt.mesh, tt.ports); got != tt.want {
				t.Errorf("SniffInterface(%+v, %v) = %q, want %q", tt.mesh, tt.ports, got, tt.want)
			}
		})
	}
}

// TestMeshOnTheWire: the hint crosses in the open request's JSON under "mesh", and a request without
// one decodes as before (no mesh).
func TestMeshOnTheWire(t *testing.T) {
	req := OpenRequest{Kind: KindMirror, Mirror: &MirrorSpec{Ports: []int{8080}, Mesh: &Mesh{Name: MeshLinkerd, Mode: MeshSidecar, ProxyUID: LinkerdProxyUID}}}
	b, err := AppendFrame(nil, req)
	if err != nil {
		t.Fatal(err)
	}
	if want := `"mesh":{"name":"Linkerd","mode":"sidecar","proxyUid":2102}`; !bytes.Contains(b, []byte(want)) {
		t.Errorf("frame %s lacks %s", b, want)
	}
	got, err := ReadMessage(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(req, got); d != "" {
		t.Errorf("round trip (-want +got):\n%s", d)
	}
	old, err := ReadMessage(bytes.NewReader(rawFrame(0x10, `{"kind":"dump","dump":{"ports":[8080]}}`)))
	if err != nil {
		t.Fatal(err)
	}
	if m := old.(OpenRequest).Dump.Mesh; m != nil {
		t.Errorf("a request without a hint decodes with mesh %+v", m)
	}
}
