package netfilter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

const (
	// tableFlagOwner is NFT_TABLE_F_OWNER (Linux 5.12), which x/sys/unix does not define: the
	// kernel deletes such a table when the netlink socket that created it closes, and refuses
	// changes to it from any other socket.
	tableFlagOwner = 0x2

	// redirectPriority puts the session's chains just before dstnat (-100). NAT chains on one
	// hook run in priority order and the first that maps a connection wins, so ours must come
	// before kube-proxy-like and service-mesh dstnat rules to see the connection at all.
	redirectPriority = -110

	// tproxyPriority is mangle's (-150), where tproxy rules usually go: after conntrack and
	// defragmentation, before any NAT could rewrite the destination tproxy looks up.
	tproxyPriority = -150

	// meshPriority puts a meshed pod's prerouting chain just after dstnat (-100), where the mesh
	// redirects what it captures to its proxy (Istio's 15006, Linkerd's 4143): a connection the
	// mesh mapped is bound before our chain runs, and one it rewrote no longer has the stolen port,
	// so the chain sees only ports the mesh leaves alone. Its proxy's plaintext connection to the
	// app is taken on lo by the output chain, which stays at redirectPriority.
	meshPriority = -90

	// rtnLocal is RTN_LOCAL, the route type of the namespace's own addresses.
	rtnLocal = 2

	// Chain names inside the session's table.
	chainPrerouting = "prerouting"
	chainOutput     = "output"
	chainInput      = "input"

	// ctStatusDstNAT is IPS_DST_NAT: set on every connection a redirect rule mapped.
	ctStatusDstNAT = 1 << 5

	// TCP header flag bits.
	tcpFlagSyn = 0x02
	tcpFlagAck = 0x10

	// ifnameSize is IFNAMSIZ: the kernel compares interface names as 16-byte registers.
	ifnameSize = 16
)

// Redirect describes what a steal session redirects.
type Redirect struct {
	// Ports are the pod ports to steal. Duplicates are harmless.
	Ports []uint16
	// ListenPort is the agent's listener, bound on the wildcard address; redirected connections
	// go there.
	ListenPort uint16
	// Mark is the SO_MARK of the agent's own sockets: their packets are never redirected, so the
	// agent can still pass connections through to the app's real ports.
	Mark uint32
	// Mesh, when set, is the service mesh whose sidecar proxy owns the pod's inbound traffic: the
	// redirect then takes connections after the proxy rather than before it (see Batch).
	Mesh *MeshRedirect
}

// MeshRedirect is what the redirect needs to know of a sidecar proxy to take the connections it
// makes to the app: after the proxy has ended mTLS and applied the mesh's policies, plaintext.
type MeshRedirect struct {
	// ProxyUID is the uid the proxy runs as: Istio's 1337, Linkerd's 2102. Its connections to the
	// app are told from its others by ProxySources.
	ProxyUID uint32
	// ProxySources are the addresses the proxy's connections to the app come from: 127.0.0.6 and
	// ::6 for Istio 1.10 and later, whose proxy calls its own pod from any other source when it
	// acts as a client (those connections go back into the mesh, and are left alone). Empty means
	// any of the pod's own addresses: Linkerd 2.11 and later connect from the pod IP.
	ProxySources []netip.Addr
	// PassSources are the addresses the agent passes connections back to the app from, one per
	// family at most (PassDialer): those the mesh's output rules let through over lo, 127.0.0.6 and
	// ::6 for Istio (which sends the rest to its proxy). Empty: the kernel's choice, which Linkerd
	// lets through, as it does every connection over lo, and so does Istio before 1.10 for the
	// 127.0.0.1 its proxy called the app at.
	PassSources []netip.Addr
}

// Validate reports the first reason m cannot take a proxy's connections.
func (m *MeshRedirect) Validate() error {
	if m.ProxyUID == 0 {
		// uid 0 would exempt every root process of the pod, and no mesh runs its proxy as root.
		return errors.New("mesh proxy uid must not be 0")
	}
	for _, a := range m.ProxySources {
		if !a.IsValid() || a.Is4In6() || a.Zone() != "" {
			return fmt.Errorf("mesh proxy source %q is not a plain IPv4 or IPv6 address", a)
		}
	}
	var v4, v6 int
	for _, a := range m.PassSources {
		if !a.IsValid() || a.Is4In6() || a.Zone() != "" {
			return fmt.Errorf("pass-through source %q is not a plain IPv4 or IPv6 address", a)
		}
		if a.Is4() {
			v4++
		} else {
			v6++
		}
	}
	if v4 > 1 || v6 > 1 {
		return fmt.Errorf("pass-through sources %v: at most one per address family", m.PassSources)
	}
	return nil
}

// Validate reports the first reason the redirect cannot be installed.
func (r Redirect) Validate() error {
	if len(r.Ports) == 0 {
		return errors.New("no port to redirect")
	}
	if slices.Contains(r.Ports, 0) {
		return errors.New("port 0 cannot be redirected")
	}
	if r.ListenPort == 0 {
		return errors.New("listen port must not be 0")
	}
	if slices.Contains(r.Ports, r.ListenPort) {
		return fmt.Errorf("listen port %d is also a port to redirect: connections would loop", r.ListenPort)
	}
	if r.Mark == 0 {
		// 0 is the mark of every socket nobody marked, so the app's clients would be exempt too.
		return errors.New("mark must not be 0")
	}
	if r.Mesh != nil {
		return r.Mesh.Validate()
	}
	return nil
}

// ports returns the ports sorted and without duplicates, so equal redirects give equal batches.
func (r Redirect) ports() []uint16 {
	return slices.Compact(slices.Sorted(slices.Values(r.Ports)))
}

// Batch returns the netlink messages of the one nftables batch that creates the session's table
// with everything in it, from BATCH_BEGIN to BATCH_END. The kernel applies a batch all or nothing.
// Sequence numbers are left 0 for the sender to fill.
//
// owned sets NFT_TABLE_F_OWNER on the table, which then redirects with NAT. In nft syntax, for
// ports P and listen port L:
//
//	table inet trafficlab_<id> {   # flags owner
//	  chain prerouting { type nat hook prerouting priority -110
//	    fib daddr type local meta l4proto tcp tcp dport P tcp flags & (syn | ack) == syn redirect to :L }
//	  chain output { type nat hook output priority -110
//	    oifname "lo" meta mark != Mark meta l4proto tcp tcp dport P tcp flags & (syn | ack) == syn redirect to :L }
//	  chain input { type filter hook input priority -110
//	    meta l4proto tcp tcp dport L ct status dnat accept
//	    meta l4proto tcp tcp dport L drop }
//	}
//
// Output matches lo only: that is how the pod reaches itself, on 127.0.0.1, ::1 and its own
// addresses alike; connections leaving the pod are not the steal's business. Prerouting matches
// only what is addressed to this network namespace itself (fib daddr type local): in a pod that is
// everything, but in the node's namespace (--allow-host-network) forwarded and bridged traffic to
// the node's other pods passes through prerouting too, and is theirs. Only connections opened after
// the table are redirected (see tcpSyn). The input chain keeps the wildcard listener from being
// reached directly, without a redirect.
//
// Without owned (a kernel before 5.12, or Options.ForceUnowned) the table could outlive the agent,
// so it redirects with tproxy, which matches only while a transparent socket listens on L: once the
// agent is gone the rule matches nothing and the app gets its traffic back, table or not.
//
//	table inet trafficlab_<id> {
//	  chain prerouting { type filter hook prerouting priority -150
//	    fib daddr type local meta mark != Mark meta l4proto tcp tcp dport P tcp flags & (syn | ack) == syn tproxy to :L accept }
//	  chain input { type filter hook input priority -110
//	    meta l4proto tcp tcp dport L drop }
//	}
//
// The pod's own connections to itself arrive on lo through prerouting too, so there is no output
// chain; the mark exempts the agent's pass-through. tproxy keeps the destination as it is (the
// accepted socket's local address is the original destination) and leaves conntrack off; packets
// addressed to L itself still meet the input chain's drop.
//
// With r.Mesh the redirect comes after the mesh's sidecar proxy, which ends the mesh's mTLS and
// enforces its policies: what the redirect takes is the proxy's plaintext connection to the app,
// so a steal hands the developer plaintext and passes the rest back as the proxy would have
// (PassDialer). The owned table's prerouting chain moves to priority -90, after the mesh's
// dstnat, and sees only what the mesh does not capture; the output chain stays at -110, before the
// mesh's, and tells the proxy's connections by its uid U and their sources S:
//
//	chain prerouting { type nat hook prerouting priority -90
//	  fib daddr type local meta l4proto tcp tcp dport P tcp flags & (syn | ack) == syn redirect to :L }
//	chain output { type nat hook output priority -110
//	  oifname "lo" meta mark != Mark meta skuid != U meta l4proto tcp tcp dport P ... redirect to :L
//	  oifname "lo" meta mark != Mark meta skuid U meta nfproto ipv4 ip saddr S meta l4proto tcp tcp dport P ... redirect to :L
//	  oifname "lo" meta mark != Mark meta skuid U meta nfproto ipv6 ip6 saddr S meta l4proto tcp tcp dport P ... redirect to :L }
//
// and, without sources (Linkerd: from the pod IP), instead of the last two
//
//	oifname "lo" meta mark != Mark meta skuid U fib saddr type local meta l4proto tcp tcp dport P ... redirect to :L
//
// The first output rule keeps the pod's own connections to itself, which the meshes leave outside
// the mesh too. Istio's proxy calling its own pod as a client (uid U, another source) is not taken:
// Istio sends that connection back to its proxy's inbound port, which then calls the app from S.
//
// The unowned table needs no uid: its prerouting chain moves to priority -90 as well, after the
// mesh's dstnat, where connections the mesh captured, the looped-back ones its output rules
// redirect included, carry the proxy's port instead of P. What still carries P is what the mesh
// leaves to the app: the proxy's connections to it (their packets come back through prerouting on
// lo) and the pod's own. The agent's pass-through is exempt by its mark as before.
func Batch(id string, r Redirect, owned bool) ([]netlink.Message, error) {
	name, err := TableName(id)
	if err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	b := &batch{table: name}
	if owned {
		b.add(unix.NFT_MSG_NEWTABLE, netlink.Create|netlink.Excl, func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_TABLE_NAME, name)
			ae.Uint32(unix.NFTA_TABLE_FLAGS, tableFlagOwner)
		})
		b.natRedirect(r)
	} else {
		b.add(unix.NFT_MSG_NEWTABLE, netlink.Create|netlink.Excl, func(ae *netlink.AttributeEncoder) {
			ae.String(unix.NFTA_TABLE_NAME, name)
			ae.Uint32(unix.NFTA_TABLE_FLAGS, 0)
		})
		b.tproxyRedirect(r)
	}
	if b.err != nil {
		return nil, fmt.Errorf("encode nftables batch for table inet %q: %w", name, b.err)
	}
	return b.done(), nil
}

// natRedirect adds the chains and rules of the owned table.
func (b *batch) natRedirect(r Redirect) {
	prerouting := int32(redirectPriority)
	if r.Mesh != nil {
		prerouting = meshPriority
	}
	b.chain(chainPrerouting, "nat", unix.NF_INET_PRE_ROUTING, prerouting)
	b.chain(chainOutput, "nat", unix.NF_INET_LOCAL_OUT, redirectPriority)
	b.chain(chainInput, "filter", unix.NF_INET_LOCAL_IN, redirectPriority)

	b.natTake(r)
	// Accept-then-drop rather than one "not dnat: drop" rule: a packet without conntrack state
	// (notrack) fails the ct match and must be dropped too.
	b.rule(chainInput, slices.Concat(tcpDport(r.ListenPort), []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, ctStatusDstNAT),
			Xor:  make([]byte, 4),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}))
	b.rule(chainInput, slices.Concat(tcpDport(r.ListenPort), []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}))
}

// natTake adds the owned table's redirecting rules (prerouting and output), which StopNew removes
// and Restore adds again.
func (b *batch) natTake(r Redirect) {
	ports := r.ports()
	for _, p := range ports {
		b.rule(chainPrerouting, slices.Concat(daddrLocal(), tcpDport(p), tcpSyn(), redirectTo(r.ListenPort)))
	}
	loopback := slices.Concat([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("lo")},
	}, markNot(r.Mark))
	for _, p := range ports {
		take := slices.Concat(tcpDport(p), tcpSyn(), redirectTo(r.ListenPort))
		if r.Mesh == nil {
			b.rule(chainOutput, slices.Concat(loopback, take))
			continue
		}
		b.rule(chainOutput, slices.Concat(loopback, skuid(expr.CmpOpNeq, r.Mesh.ProxyUID), take))
		proxy := slices.Concat(loopback, skuid(expr.CmpOpEq, r.Mesh.ProxyUID))
		if len(r.Mesh.ProxySources) == 0 {
			b.rule(chainOutput, slices.Concat(proxy, saddrLocal(), take))
		}
		for _, src := range r.Mesh.ProxySources {
			b.rule(chainOutput, slices.Concat(proxy, saddrIs(src), take))
		}
	}
}

// tproxyRedirect adds the chains and rules of the unowned table.
func (b *batch) tproxyRedirect(r Redirect) {
	prerouting := int32(tproxyPriority)
	if r.Mesh != nil {
		prerouting = meshPriority
	}
	b.chain(chainPrerouting, "filter", unix.NF_INET_PRE_ROUTING, prerouting)
	b.chain(chainInput, "filter", unix.NF_INET_LOCAL_IN, redirectPriority)
	b.tproxyTake(r)
	b.rule(chainInput, slices.Concat(tcpDport(r.ListenPort), []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}))
}

// tproxyTake adds the unowned table's redirecting rule per port, which StopNew removes and Restore
// adds again.
func (b *batch) tproxyTake(r Redirect) {
	for _, p := range r.ports() {
		b.rule(chainPrerouting, slices.Concat(daddrLocal(), markNot(r.Mark), tcpDport(p), tcpSyn(), tproxyTo(r.ListenPort)))
	}
}

// deleteBatch is `nft delete table inet NAME` as one batch.
func deleteBatch(name string) []netlink.Message {
	b := &batch{table: name}
	b.add(unix.NFT_MSG_DELTABLE, 0, func(ae *netlink.AttributeEncoder) {
		ae.String(unix.NFTA_TABLE_NAME, name)
	})
	return b.done()
}

// batch collects the messages of one nftables transaction.
type batch struct {
	table string
	msgs  []netlink.Message
	err   error
}

func (b *batch) add(typ int, flags netlink.HeaderFlags, attrs func(ae *netlink.AttributeEncoder)) {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian // nf_tables attributes are big endian
	attrs(ae)
	data, err := ae.Encode()
	if err != nil {
		b.err = errors.Join(b.err, err)
		return
	}
	b.msgs = append(b.msgs, netlink.Message{
		Header: netlink.Header{
			Type:  nftMsgType(typ),
			Flags: netlink.Request | netlink.Acknowledge | flags,
		},
		Data: append(nfgenmsg(unix.NFPROTO_INET, 0), data...),
	})
}

func (b *batch) chain(name, typ string, hook uint32, priority int32) {
	b.add(unix.NFT_MSG_NEWCHAIN, netlink.Create, func(ae *netlink.AttributeEncoder) {
		ae.String(unix.NFTA_CHAIN_TABLE, b.table)
		ae.String(unix.NFTA_CHAIN_NAME, name)
		ae.Nested(unix.NFTA_CHAIN_HOOK, func(nae *netlink.AttributeEncoder) error {
			nae.Uint32(unix.NFTA_HOOK_HOOKNUM, hook)
			nae.Int32(unix.NFTA_HOOK_PRIORITY, priority)
			return nil
		})
		ae.String(unix.NFTA_CHAIN_TYPE, typ)
	})
}

func (b *batch) rule(chain string, exprs []expr.Any) {
	b.add(unix.NFT_MSG_NEWRULE, netlink.Create|netlink.Append, func(ae *netlink.AttributeEncoder) {
		ae.String(unix.NFTA_RULE_TABLE, b.table)
		ae.String(unix.NFTA_RULE_CHAIN, chain)
		ae.Nested(unix.NFTA_RULE_EXPRESSIONS, func(nae *netlink.AttributeEncoder) error {
			for _, e := range exprs {
				data, err := expr.Marshal(unix.NFPROTO_INET, e)
				if err != nil {
					return err
				}
				nae.Bytes(unix.NLA_F_NESTED|unix.NFTA_LIST_ELEM, data)
			}
			return nil
		})
	})
}

// done frames the messages as one batch for the nf_tables subsystem.
func (b *batch) done() []netlink.Message {
	marker := func(typ netlink.HeaderType) netlink.Message {
		return netlink.Message{
			Header: netlink.Header{Type: typ, Flags: netlink.Request},
			// The batch markers carry the subsystem they address in nfgenmsg's res_id.
			Data: nfgenmsg(unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES),
		}
	}
	out := make([]netlink.Message, 0, len(b.msgs)+2)
	out = append(out, marker(unix.NFNL_MSG_BATCH_BEGIN))
	out = append(out, b.msgs...)
	return append(out, marker(unix.NFNL_MSG_BATCH_END))
}

func nftMsgType(typ int) netlink.HeaderType {
	return netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ)
}

// nfgenmsg is the header every nfnetlink message starts with: family, version, res_id (big
// endian).
func nfgenmsg(family uint8, resID uint16) []byte {
	return binary.BigEndian.AppendUint16([]byte{family, unix.NFNETLINK_V0}, resID)
}

// tcpDport is `meta l4proto tcp tcp dport PORT`.
func tcpDport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// tcpSyn is `tcp flags & (syn | ack) == syn`: the opening packet of a connection.
//
// NAT rules see the first packet of every connection conntrack tracks, and that is not always a
// SYN: in a pod netns where nothing used conntrack before our table (no mesh, no rules), every
// connection already open is picked up mid-stream by its next packet. Redirected there, it would
// land on the agent's listener, which knows nothing of it and resets it. Open connections stay
// with the app; Flush is how a steal takes them.
func tcpSyn() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpFlagSyn | tcpFlagAck}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{tcpFlagSyn}},
	}
}

// daddrLocal is `fib daddr type local`: the packet is addressed to this network namespace itself.
func daddrLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		// The route type is a host-order u32 in the register.
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, rtnLocal)},
	}
}

// saddrLocal is `fib saddr type local`: the packet comes from one of this namespace's addresses.
func saddrLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, rtnLocal)},
	}
}

// saddrIs is `meta nfproto ipv4 ip saddr A` (ipv6, ip6 saddr for an IPv6 address): an inet
// table sees both families, and the source sits at a different offset in each header.
func saddrIs(a netip.Addr) []expr.Any {
	proto, offset := byte(unix.NFPROTO_IPV4), uint32(12)
	if a.Is6() {
		proto, offset = unix.NFPROTO_IPV6, 8
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(a.BitLen() / 8)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
	}
}

// skuid is `meta skuid UID` (op eq) or `meta skuid != UID` (op neq): the uid of the process whose
// socket sent the packet.
func skuid(op expr.CmpOp, uid uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		// A host-order u32, as nft encodes uids.
		&expr.Cmp{Op: op, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, uid)},
	}
}

// markNot is `meta mark != MARK`.
func markNot(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		// The mark is a host-order u32 in the register, as nft encodes it.
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, mark)},
	}
}

// tproxyTo is `tproxy to :PORT accept`: the packet goes to the transparent socket listening on
// PORT, if there is one; if not, the tproxy expression breaks the rule and the packet goes on as
// if the table were not there.
func tproxyTo(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
		// Family unspecified: in an inet table, one rule for IPv4 and IPv6, port only.
		&expr.TProxy{Family: unix.NFPROTO_UNSPEC, TableFamily: unix.NFPROTO_INET, RegPort: 1},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// redirectTo is `redirect to :PORT`.
func redirectTo(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
		// Flags as nft sends them for `redirect to :PORT`.
		&expr.Redir{RegisterProtoMin: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
	}
}

func ifname(name string) []byte {
	b := make([]byte, ifnameSize)
	copy(b, name)
	return b
}
