//go:build linux && kernel

package sniff_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/capture"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/mirror"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/sniff"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

const (
	podIP   = "10.81.0.1"
	appPort = 8080
)

// meshes are the two sidecars as the agent meets them: the port their nat rules redirect inbound
// connections to, and the source of the proxy's plaintext connection to the app.
// probes are what the plugin sends of the app's tcpSocket probe on its port: in an Istio pod the
// injector moves it to the sidecar's prober list, which pilot-agent runs from 127.0.0.6, the source of
// every meshed connection to the app as well.
var meshes = []struct {
	hint     wire.Mesh
	inbound  int
	upstream string
	probes   *wire.Probes
}{
	{hint: wire.Mesh{Name: wire.MeshIstio, Mode: wire.MeshSidecar, ProxyUID: wire.IstioProxyUID}, inbound: 15006, upstream: "127.0.0.6",
		probes: &wire.Probes{Declared: []wire.Probe{{Port: appPort, Kind: wire.ProbeTCP}}, Sources: []string{"127.0.0.6", "10.81.0.254"}}},
	{hint: wire.Mesh{Name: wire.MeshLinkerd, Mode: wire.MeshSidecar, ProxyUID: wire.LinkerdProxyUID}, inbound: 4143, upstream: podIP,
		probes: &wire.Probes{Declared: []wire.Probe{{Port: appPort, Kind: wire.ProbeTCP}}, Sources: []string{"10.81.0.254"}}},
}

// meshedPod is a pod namespace with a sidecar-like proxy in front of an HTTP app: a real nft REDIRECT
// of the app's port to the proxy's inbound port, where the proxy ends the client's TLS (the mesh's
// mTLS, as seen on eth0) and opens its own plaintext connection to podIP:appPort from the mesh's
// source address, over lo.
type meshedPod struct {
	pod, client *testnet.NS
	roots       *x509.CertPool
	app         *paths
}

// paths records the request paths a server got.
type paths struct {
	mu   sync.Mutex
	seen []string
}

func (p *paths) add(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen = append(p.seen, s)
}

func (p *paths) list() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(slices.Values(p.seen))
}

func newMeshedPod(t *testing.T, inbound int, upstream string) *meshedPod {
	t.Helper()
	pod, client := testnet.New(t), testnet.New(t)
	testnet.Connect(t, pod, []netip.Prefix{netip.MustParsePrefix(podIP + "/24")}, client, []netip.Prefix{netip.MustParsePrefix("10.81.0.2/24")})
	// The mesh's inbound capture: what istio-iptables' ISTIO_IN_REDIRECT and Linkerd's
	// PROXY_INIT_REDIRECT do for the app's port, at the nat prerouting hook.
	rules := fmt.Sprintf("table ip meshtest {\n chain prerouting {\n  type nat hook prerouting priority dstnat; policy accept;\n  tcp dport %d redirect to :%d\n }\n}\n", appPort, inbound)
	cmd := exec.Command("ip", "netns", "exec", pod.Name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in the pod: %v: %s", err, out)
	}

	m := &meshedPod{pod: pod, client: client, app: &paths{}}
	appSrv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.app.add(r.URL.Path)
		fmt.Fprintf(w, "app %s\n", r.URL.Path)
	})}
	appL := pod.Listen(t, "tcp", fmt.Sprintf(":%d", appPort))
	go func() { _ = appSrv.Serve(appL) }()
	t.Cleanup(func() { appSrv.Close() })

	cert, roots := selfSigned(t)
	m.roots = roots
	proxyL := pod.Listen(t, "tcp", fmt.Sprintf(":%d", inbound))
	var conns sync.WaitGroup
	t.Cleanup(conns.Wait)
	go func() {
		for {
			c, err := proxyL.Accept()
			if err != nil {
				return
			}
			conns.Go(func() { proxy(t, pod, c, cert, upstream) })
		}
	}()
	return m
}

// proxy is the sidecar's inbound path for one connection: the original destination the redirect
// kept, the TLS handshake, and a plaintext connection to the app from the mesh's source address.
func proxy(t *testing.T, pod *testnet.NS, c net.Conn, cert tls.Certificate, upstream string) {
	defer c.Close()
	dst, err := originalDst(c.(*net.TCPConn))
	if err != nil {
		t.Errorf("proxy: %v", err)
		return
	}
	tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err := tc.Handshake(); err != nil {
		t.Errorf("proxy: TLS handshake: %v", err)
		return
	}
	var up net.Conn
	if err := pod.Do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(upstream)}}
		var err error
		up, err = d.Dial("tcp", dst.String())
		return err
	}); err != nil {
		t.Errorf("proxy: dial the app at %s from %s: %v", dst, upstream, err)
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(up, tc)
		_ = up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(tc, up)
	_ = tc.CloseWrite()
	<-done
}

// originalDst is SO_ORIGINAL_DST, the address the client dialled before the redirect.
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var addr netip.AddrPort
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		var m *unix.IPv6Mreq
		m, gerr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if gerr == nil {
			// A sockaddr_in: family, port (big endian), address.
			addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Multiaddr[4:8])), binary.BigEndian.Uint16(m.Multiaddr[2:4]))
		}
	}); err != nil {
		return netip.AddrPort{}, err
	}
	return addr, gerr
}

func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meshed-pod"},
		IPAddresses: []net.IP{net.ParseIP(podIP)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, roots
}

// requests sends HTTPS requests to the pod's app port from the client namespace, three on each of two
// keep-alive connections, checks the app answered each, and returns their paths, sorted.
func (m *meshedPod) requests(t *testing.T) []string {
	t.Helper()
	var want []string
	for conn := range 2 {
		hc := &http.Client{Transport: &http.Transport{DialContext: m.client.DialContext, TLSClientConfig: &tls.Config{RootCAs: m.roots, MinVersion: tls.VersionTLS13}}}
		for i := range 3 {
			path := fmt.Sprintf("/c%d/r%d", conn, i)
			resp, err := hc.Get(fmt.Sprintf("https://%s:%d%s", podIP, appPort, path))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "app "+path+"\n" {
				t.Fatalf("client got %q, want the app's answer", b)
			}
			want = append(want, path)
		}
		hc.CloseIdleConnections()
	}
	slices.Sort(want)
	return want
}

// TestKernelMeshedDumpReadsLoopback: a dump of the app's port in a pod with a sidecar (Istio's and
// Linkerd's inbound path: a real nft redirect to a TLS-ending proxy that calls the app over lo) holds
// every HTTP request once, in plaintext, on lo only: not one byte of the TLS on eth0, and not lo's
// outgoing copy of each frame.
func TestKernelMeshedDumpReadsLoopback(t *testing.T) {
	testnet.RequireRoot(t)
	for _, mesh := range meshes {
		t.Run(mesh.hint.Name, func(t *testing.T) {
			m := newMeshedPod(t, mesh.inbound, mesh.upstream)
			var c *capture.Capture
			if err := m.pod.Do(func() error {
				var err error
				c, err = sniff.Open(wire.DumpSpec{Ports: []int{appPort}, Mesh: &mesh.hint}, nil)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			ctx, cancel := context.WithCancel(context.Background())
			dumped := make(chan error, 1)
			go func() {
				_, err := sniff.Dump(ctx, c, &buf)
				dumped <- err
			}()
			want := m.requests(t)
			// The dump ends once the last connection's FIN is in: the proxy closes its upstream when the
			// client's connection ends, which CloseIdleConnections did.
			cancel()
			if err := <-dumped; err != nil {
				t.Fatal(err)
			}

			r, err := pcapgo.NewNgReader(&buf, pcapgo.NgReaderOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got := &paths{}
			asm := capture.NewAssembler(capture.HTTPStreams(capture.HTTPOptions{OnExchange: func(e capture.Exchange) {
				if e.Method != "" {
					got.add(e.Path)
				}
			}}), capture.AssemblerOptions{ServerPorts: []uint16{appPort}})
			sources, interfaces := map[string]bool{}, map[string]int{}
			// seen tells a frame read twice (lo hands each frame to packet sockets leaving and
			// arriving) by what no two segments of a connection share.
			seen := map[string]bool{}
			var packets, tlsRecords, twice int
			for {
				data, ci, err := r.ReadPacketData()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				ifc, err := r.Interface(ci.InterfaceIndex)
				if err != nil {
					t.Fatal(err)
				}
				interfaces[ifc.Name]++
				p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
				if tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
					key := fmt.Sprintf("%d>%d seq %d ack %d win %d syn %t fin %t len %d", tcp.SrcPort, tcp.DstPort, tcp.Seq, tcp.Ack, tcp.Window, tcp.SYN, tcp.FIN, len(tcp.Payload))
					if seen[key] {
						twice++
					}
					seen[key] = true
					// A TLS record starts with its content type (handshake 22, application data 23)
					// and version 3.x.
					if len(tcp.Payload) >= 2 && (tcp.Payload[0] == 22 || tcp.Payload[0] == 23) && tcp.Payload[1] == 3 {
						tlsRecords++
					}
					if ip, ok := p.NetworkLayer().(*layers.IPv4); ok && tcp.DstPort == appPort {
						sources[ip.SrcIP.String()] = true
					}
				}
				packets++
				asm.Feed(data, ci)
			}
			asm.Close()
			if d := fmt.Sprint(want); fmt.Sprint(got.list()) != d {
				t.Errorf("requests in the dump %q, want each of %q once", got.list(), want)
			}
			if len(interfaces) != 1 || interfaces["lo"] == 0 {
				t.Errorf("packets by interface %v, want lo only", interfaces)
			}
			if twice != 0 {
				t.Errorf("%d of %d frames were captured twice", twice, packets)
			}
			if tlsRecords != 0 {
				t.Errorf("%d of %d packets carry TLS records", tlsRecords, packets)
			}
			if len(sources) != 1 || !sources[mesh.upstream] {
				t.Errorf("connections to the app from %v, want from %s only (the proxy)", sources, mesh.upstream)
			}
			if fmt.Sprint(m.app.list()) != fmt.Sprint(want) {
				t.Errorf("the app got %q, want %q", m.app.list(), want)
			}
		})
	}
}

// toLocal is the plugin's side of a mirror: every mirrored connection is joined to the local server.
type toLocal struct{ addr string }

func (d toLocal) OpenIncoming(ctx context.Context, _ wire.OpenRequest) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.addr)
}

// TestKernelMeshedSniffMirror: a sniffing mirror of the app's port in a pod with a sidecar, captured as
// the agent captures for it, copies every request the clients sent through TLS once, in plaintext,
// and nothing it could not read; the app's tcpSocket probe, which comes from the proxy's source too,
// does not make every connection from there a probe.
func TestKernelMeshedSniffMirror(t *testing.T) {
	testnet.RequireRoot(t)
	for _, mesh := range meshes {
		t.Run(mesh.hint.Name, func(t *testing.T) {
			m := newMeshedPod(t, mesh.inbound, mesh.upstream)
			local := &paths{}
			ll, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			localSrv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				local.add(r.URL.Path)
				fmt.Fprintf(w, "local %s\n", r.URL.Path)
			})}
			go func() { _ = localSrv.Serve(ll) }()
			t.Cleanup(func() { localSrv.Close() })

			spec := wire.MirrorSpec{Ports: []int{appPort}, Mode: wire.MirrorSniff, Mesh: &mesh.hint, Probes: mesh.probes}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			mr, err := mirror.New(ctx, mirror.Config{Session: "meshtest", Spec: spec, Open: toLocal{addr: ll.Addr().String()}})
			if err != nil {
				t.Fatal(err)
			}
			var c *capture.Capture
			if err := m.pod.Do(func() error {
				var err error
				// What the agent's mirror opens for spec (ephemeral/attach).
				c, err = sniff.Open(wire.DumpSpec{Ports: spec.Ports, Filter: "tcp", Mesh: spec.Mesh}, nil)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- mr.Sniff(ctx, c) }()
			want := m.requests(t)
			deadline := time.Now().Add(15 * time.Second)
			for len(local.list()) < len(want) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			mr.Close()
			if fmt.Sprint(local.list()) != fmt.Sprint(want) {
				t.Errorf("the local server got %q, want each of %q once", local.list(), want)
			}
			s := mr.Stats()
			if s.Mirrored != int64(len(want)) || s.Requests != int64(len(want)) || s.Dropped() != 0 || s.Connections != 2 {
				t.Errorf("stats %+v, want %d requests on 2 connections, each mirrored", s, len(want))
			}
		})
	}
}
