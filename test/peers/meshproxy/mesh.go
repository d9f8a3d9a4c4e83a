package main

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/netip"
)

// mesh is what differs between the two sidecars this proxy plays.
type mesh struct {
	name string
	// uid is the proxy's UID, which the mesh's output rules let out uncaptured.
	uid int
	// inboundPort and outboundPort are where the capture rules redirect incoming and outgoing TCP.
	inboundPort, outboundPort int
	// statusPorts are the ports the proxy answers health checks on (excluded from capture).
	statusPorts []int
	// upstreamFromLoopback: the proxy dials the app from 127.0.0.6 (Istio ≥1.10, Envoy's
	// upstream_bind_config, which its output rules let through on lo); else from the pod IP (Linkerd ≥2.11).
	upstreamFromLoopback bool
}

// istioUpstreamSource is the address Envoy and pilot-agent's prober dial the app from.
func istioUpstreamSource() netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, 6}) }

func meshByName(name string) (mesh, error) {
	switch name {
	case "istio":
		return mesh{name: "Istio", uid: 1337, inboundPort: 15006, outboundPort: 15001, statusPorts: []int{15020, 15021}, upstreamFromLoopback: true}, nil
	case "linkerd":
		return mesh{name: "Linkerd", uid: 2102, inboundPort: 4143, outboundPort: 4140, statusPorts: []int{4191}}, nil
	default:
		return mesh{}, fmt.Errorf("-mesh %q: want istio or linkerd", name)
	}
}

// upstreamSource is the address the proxy dials the app from.
func (m mesh) upstreamSource(podIP netip.Addr) netip.Addr {
	if m.upstreamFromLoopback {
		return istioUpstreamSource()
	}
	return podIP
}

// identity is the workload identity the mesh gives a pod's service account: Istio's SPIFFE ID,
// Linkerd's DNS-like name.
func (m mesh) identity(ns, sa string) string {
	if m.upstreamFromLoopback {
		return fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", ns, sa)
	}
	return fmt.Sprintf("%s.%s.serviceaccount.identity.linkerd.cluster.local", sa, ns)
}

// identityOf reads a peer certificate's identity the way the mesh writes it: Istio's URI SAN,
// Linkerd's DNS SAN.
func (m mesh) identityOf(cert *x509.Certificate) string {
	if m.upstreamFromLoopback {
		if len(cert.URIs) > 0 {
			return cert.URIs[0].String()
		}
		return ""
	}
	if len(cert.DNSNames) > 0 {
		return cert.DNSNames[0]
	}
	return ""
}

// The request headers by which the sidecars tell the app who called (set from the mTLS peer,
// removed from plaintext callers, who could forge them).
const (
	headerXFCC     = "X-Forwarded-Client-Cert"
	headerClientID = "L5d-Client-Id"
)

// setPeer writes the caller's identity into an inbound request as the mesh does: Envoy's XFCC in
// Istio's SANITIZE_SET form (By, Hash, URI), Linkerd's l5d-client-id. peer nil: a plaintext caller.
func (m mesh) setPeer(h http.Header, self string, peer *x509.Certificate) {
	h.Del(headerXFCC)
	h.Del(headerClientID)
	if peer == nil {
		return
	}
	if m.upstreamFromLoopback {
		sum := sha256.Sum256(peer.Raw)
		h.Set(headerXFCC, fmt.Sprintf("By=%s;Hash=%s;URI=%s", self, hex.EncodeToString(sum[:]), m.identityOf(peer)))
		return
	}
	h.Set(headerClientID, m.identityOf(peer))
}
