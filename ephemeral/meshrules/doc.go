// Package meshrules reads a service mesh's traffic-capture rules in the pod's network namespace
// and says what they do, so that the agent can place its redirect after the sidecar and hand
// connections back the way the sidecar would.
//
// Reading. Read collects the rules in every form they come in, into one model (Rules: Tables of
// Chains of Rules, each a list of Matches and Actions):
//   - iptables-legacy (SourceLegacy), which nftables netlink cannot see: the nat and mangle
//     tables, IPv4 and IPv6, read as iptables does with getsockopt IPT_SO_GET_INFO and
//     IPT_SO_GET_ENTRIES (IP6T_*), and their ipt_entry blobs parsed here (legacy.go);
//   - iptables-nft (SourceIptablesNft): the ip/ip6 nat and mangle tables through nftables
//     netlink, native expressions and the xt compat `match`/`target` expressions iptables-nft
//     keeps (owner, multiport, REDIRECT, ...), whose info blobs are decoded by the same code as
//     legacy's (xt.go);
//   - native nftables (SourceNftables): every other ip, ip6 and inet table, such as Istio's
//     `inet istio-proxy-nat` and `inet istio-proxy-mangle`.
//
// The agent's own tables (netfilter.TablePrefix) are skipped. A match or action this package does
// not know is kept as FieldUnknown or ActionUnknown naming it, and is an error only when a
// connection's evaluation reaches it. Reading needs CAP_NET_ADMIN; without it Read's error wraps
// EPERM and the caller decides from the pod's spec.
//
// Evaluating. Rules.Evaluate runs a TCP connection's first packet (Conn: hook prerouting or
// output, source, destination, interfaces, uid, gid, mark) through the nat base chains of its
// family in priority order and returns its Outcome: Captured to a local port (the proxy's),
// Passed (returned, accepted, or untouched) or Dropped, naming the deciding rule.
//
// Classifying. Rules.Inbound tries the connections a mesh distinguishes and returns an Inbound:
// Mesh (MeshIstio, MeshLinkerd or "" for none), Mode (ModeSidecar, or ModeTPROXY for Istio's
// TPROXY interception, which callers refuse), the Source of the capturing rules, ProxyUID,
// InboundPort (15006, 4143) and OutboundPort (15001, 4140), and PassSource, the address the
// sidecar hands connections to the app from (127.0.0.6 and ::6 for Istio; the zero Addr means the
// pod's own address, as Linkerd uses). Inbound.Captured(port) says whether an arriving
// connection to a port is captured by the mesh; Inbound.PassBack says whether the connection the
// agent dials back to the app (over lo, from PassSource or the pod's address, as its own uid, with
// its pass-through mark) would be captured again. An error names the rule it could not evaluate,
// or says that captures go to two ports or to a mesh it does not know.
//
// The mesh's rules are evaluated, not pattern-matched: the tests feed it the rules Istio's own
// istio-iptables writes (iptables-legacy, iptables-nft, native nftables; REDIRECT and TPROXY) and
// Linkerd's proxy-init rules (internal/meshtest), and check the evaluator against where the
// kernel really delivers connections.
package meshrules
