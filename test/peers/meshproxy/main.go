// Command meshproxy is the test world's service-mesh sidecar: a small proxy that behaves like Istio's
// Envoy or Linkerd's proxy where trafficlab meets them, so the e2e tests can run meshed pods under the
// meshes' real capture rules (applied by test/cni/meshinit) without the meshes' control planes.
//
// What it does like the real ones:
//   - runs as the mesh's proxy UID (1337 for Istio, 2102 for Linkerd), which the capture rules let
//     out uncaptured; it refuses to start under another UID, set by the pod's securityContext;
//   - inbound: the listener the rules redirect incoming TCP to (15006 / 4143) reads SO_ORIGINAL_DST
//     (podIP:P), terminates mTLS when the caller is a meshed peer (a TLS ClientHello signed by the
//     test CA) or takes plaintext otherwise, and proxies HTTP/1.1 and h2c request by request to the
//     app at podIP:P: from 127.0.0.6 (Istio) or from the pod IP (Linkerd), over a keep-alive pool of
//     HTTP/1.1 connections and one h2 connection per app port, so one client connection's requests may
//     go over several upstream connections, as Envoy's do. The caller's mesh identity reaches the app
//     as X-Forwarded-Client-Cert (Istio) or l5d-client-id (Linkerd). Other TCP is passed through;
//   - outbound: the listener the rules redirect the app's outgoing TCP to (15001 / 4140) reads
//     SO_ORIGINAL_DST and dials it with mTLS (the pod's identity in a certificate made at start from
//     the CA the harness mounts), falling back to plaintext when the destination has no sidecar;
//   - Istio's status port 15020 (`/app-health/<container>/<kind>`: the app's own probes, listed in
//     ISTIO_KUBE_APP_PROBERS by the injector, sent to the app from 127.0.0.6 as pilot-agent does) and
//     Envoy's readiness on 15021 `/healthz/ready`; Linkerd's admin port 4191 `/ready` and `/live`.
//
// Usage: peer-meshproxy -mesh istio|linkerd [-ca DIR]
// Environment (downward API): POD_IP, POD_NAMESPACE, POD_SERVICE_ACCOUNT.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sync/errgroup"
)

func main() {
	meshName := flag.String("mesh", "", "which sidecar to behave like: istio or linkerd")
	caDir := flag.String("ca", "/etc/meshca", "directory with the mesh CA's ca.crt and ca.key (PEM)")
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := run(ctx, *meshName, *caDir)
	stop()
	if err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, meshName, caDir string) error {
	m, err := meshByName(meshName)
	if err != nil {
		return err
	}
	if uid := os.Getuid(); uid != m.uid {
		return fmt.Errorf("%s's sidecar runs as uid %d (the capture rules let that uid out), this process is uid %d: set runAsUser in the container's securityContext", m.name, m.uid, uid)
	}
	podIP, err := netip.ParseAddr(os.Getenv("POD_IP"))
	if err != nil {
		return fmt.Errorf("POD_IP %q (downward API status.podIP): %w", os.Getenv("POD_IP"), err)
	}
	ns, sa := os.Getenv("POD_NAMESPACE"), os.Getenv("POD_SERVICE_ACCOUNT")
	if ns == "" || sa == "" {
		return fmt.Errorf("POD_NAMESPACE and POD_SERVICE_ACCOUNT must be set (downward API metadata.namespace, spec.serviceAccountName)")
	}
	ca, err := loadCA(caDir)
	if err != nil {
		return err
	}
	id := m.identity(ns, sa)
	creds, err := ca.issue(m, id)
	if err != nil {
		return err
	}
	p := newProxy(m, podIP, id, creds, originalDst)
	probers, err := parseAppProbers(os.Getenv(istioAppProbers))
	if err != nil {
		return err
	}
	lc := net.ListenConfig{}
	listen := func(port int) (net.Listener, error) {
		ln, err := lc.Listen(ctx, "tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			return nil, fmt.Errorf("listen on %d: %w", port, err)
		}
		return ln, nil
	}
	in, err := listen(m.inboundPort)
	if err != nil {
		return err
	}
	out, err := listen(m.outboundPort)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.serveInbound(ctx, in) })
	g.Go(func() error { return p.serveOutbound(ctx, out) })
	for _, port := range m.statusPorts {
		ln, err := listen(port)
		if err != nil {
			return err
		}
		g.Go(func() error { return p.serveStatus(ctx, ln, probers) })
	}
	log.Printf("%s sidecar for %s (uid %d): inbound :%d, outbound :%d, status %v, identity %s",
		m.name, podIP, m.uid, m.inboundPort, m.outboundPort, m.statusPorts, id)
	return g.Wait()
}
