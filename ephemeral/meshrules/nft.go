package meshrules

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
)

// iptablesNftNames are the table names iptables-nft creates (in families ip and ip6); any other
// nftables table is SourceNftables.
var iptablesNftNames = map[string]bool{"nat": true, "mangle": true, "filter": true, "raw": true, "security": true}

// readNft reads every ip, ip6 and inet table through c, except the agent's own
// (netfilter.TablePrefix), whose redirect is what is being placed around the mesh's. c's
// replies must pass through idx (nftraw.go), from which the rules' expressions are decoded.
func readNft(c *nftables.Conn, idx *ruleIndex) ([]*Table, error) {
	tables, err := c.ListTables()
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	var out []*Table
	for _, nt := range tables {
		var fam Family
		switch nt.Family {
		case nftables.TableFamilyIPv4:
			fam = FamilyIPv4
		case nftables.TableFamilyIPv6:
			fam = FamilyIPv6
		case nftables.TableFamilyINet:
			fam = FamilyINet
		default:
			continue
		}
		if strings.HasPrefix(nt.Name, netfilter.TablePrefix) {
			continue
		}
		t := &Table{Source: SourceNftables, Family: fam, Name: nt.Name}
		if fam != FamilyINet && iptablesNftNames[nt.Name] {
			t.Source = SourceIptablesNft
		}
		for _, nc := range chains {
			if nc.Table.Name != nt.Name || nc.Table.Family != nt.Family {
				continue
			}
			c2 := &Chain{Name: nc.Name, Type: string(nc.Type)}
			if nc.Hooknum != nil {
				c2.Hook = Hook(*nc.Hooknum + 1)
			}
			if nc.Priority != nil {
				c2.Priority = int32(*nc.Priority)
			}
			if nc.Policy != nil && *nc.Policy == nftables.ChainPolicyDrop {
				c2.PolicyDrop = true
			}
			rules, err := c.GetRules(nt, nc)
			if err != nil {
				return nil, fmt.Errorf("list the rules of nftables chain %s %s %s: %w", fam, nt.Name, nc.Name, err)
			}
			for i, nr := range rules {
				raw, err := idx.get(ruleKey{byte(nt.Family), nt.Name, nc.Name, nr.Handle})
				if err != nil {
					return nil, fmt.Errorf("%s, chain %s: %w", t, nc.Name, err)
				}
				r, err := decodeNft(fam, raw)
				if err != nil {
					return nil, fmt.Errorf("%s, chain %s, rule %d: %w", t, nc.Name, i+1, err)
				}
				c2.Rules = append(c2.Rules, r)
			}
			t.Chains = append(t.Chains, c2)
		}
		out = append(out, t)
	}
	return out, nil
}

// loaded is what an nftables register holds while a rule's expressions are read: a packet field
// (meta key, payload or ct), perhaps masked, or immediate data.
type loaded struct {
	what string // a description for unknown fields, "" when empty
	meta expr.MetaKey
	isMeta,
	isPayload bool
	base      expr.PayloadBase
	off, len  uint32
	mask      []byte
	immediate []byte
}

// decodeNft turns one rule's expressions into matches and actions, following the registers the
// way the kernel evaluates them: a load names a field, bitwise masks it, cmp or range compares
// it (a match), and immediate, redir, tproxy and meta set consume them (actions).
func decodeNft(fam Family, raws []rawExpr) (Rule, error) {
	var r Rule
	regs := map[uint32]*loaded{}
	reg := func(n uint32) *loaded {
		if l := regs[n]; l != nil {
			return l
		}
		return &loaded{what: fmt.Sprintf("register %d", n)}
	}
	unknownMatch := func(what string) { r.Matches = append(r.Matches, Match{Field: FieldUnknown, What: what}) }
	for _, raw := range raws {
		e, err := nftExpr(fam, raw)
		if err != nil {
			return r, fmt.Errorf("nftables expression %s: %w", raw.Name, err)
		}
		switch e := e.(type) {
		case nil:
			unknownMatch("nftables expression " + raw.Name)
			clear(regs) // it may have written any register
		case ctSet:
			r.Actions = append(r.Actions, Action{Kind: ActionUnknown, What: "ct set"})
		case tproxy:
			port, ok := uint16(0), true
			if e.regPort != 0 {
				port, ok = immediatePort(reg(e.regPort))
			}
			if !ok {
				r.Actions = append(r.Actions, Action{Kind: ActionUnknown, What: "tproxy to a port from a packet field"})
				continue
			}
			r.Actions = append(r.Actions, Action{Kind: ActionTPROXY, Port: port})
		case *expr.Counter, *expr.Log:
			// no effect on where the connection goes
		case *expr.Meta:
			if e.SourceRegister {
				src := reg(e.Register)
				if e.Key == expr.MetaKeyMARK && src.immediate != nil && len(src.immediate) == 4 {
					r.Actions = append(r.Actions, Action{Kind: ActionSetMark, Mark: ne.Uint32(src.immediate), Mask: 0xffffffff})
				} else {
					r.Actions = append(r.Actions, Action{Kind: ActionUnknown, What: fmt.Sprintf("meta %d set from %s", e.Key, src.what)})
				}
				continue
			}
			regs[e.Register] = &loaded{what: fmt.Sprintf("meta %d", e.Key), isMeta: true, meta: e.Key}
		case *expr.Payload:
			if e.OperationType != expr.PayloadLoad {
				r.Actions = append(r.Actions, Action{Kind: ActionUnknown, What: "payload write"})
				continue
			}
			regs[e.DestRegister] = &loaded{what: fmt.Sprintf("payload base %d offset %d length %d", e.Base, e.Offset, e.Len), isPayload: true, base: e.Base, off: e.Offset, len: e.Len}
		case *expr.Ct:
			regs[e.Register] = &loaded{what: fmt.Sprintf("ct %d", e.Key)}
		case *expr.Bitwise:
			src := *reg(e.SourceRegister)
			if len(e.Xor) != 0 && !bytes.Equal(e.Xor, make([]byte, len(e.Xor))) || len(e.Mask) == 0 {
				src = loaded{what: src.what + " (bitwise)"}
			} else {
				src.mask = e.Mask
			}
			regs[e.DestRegister] = &src
		case *expr.Immediate:
			regs[e.Register] = &loaded{what: "immediate", immediate: e.Data}
		case *expr.Cmp:
			r.Matches = append(r.Matches, nftCmp(fam, reg(e.Register), e.Op, e.Data))
		case *expr.Range:
			l := reg(e.Register)
			field, ok := portField(l)
			if !ok || len(e.FromData) != 2 || len(e.ToData) != 2 || (e.Op != expr.CmpOpEq && e.Op != expr.CmpOpNeq) {
				unknownMatch("range on " + l.what)
				continue
			}
			r.Matches = append(r.Matches, Match{Field: field, Invert: e.Op == expr.CmpOpNeq, AbsentFails: true,
				Ports: []PortRange{{binary.BigEndian.Uint16(e.FromData), binary.BigEndian.Uint16(e.ToData)}}})
		case *expr.Lookup:
			unknownMatch(fmt.Sprintf("lookup in set %q on %s", e.SetName, reg(e.SourceRegister).what))
		case compat:
			if !e.target {
				ms, err := xtMatch(e.name, uint8(e.rev), e.info)
				if err != nil {
					return r, err
				}
				r.Matches = append(r.Matches, ms...)
				continue
			}
			a, err := xtTarget(e.name, uint8(e.rev), fam, e.info)
			if err != nil {
				return r, err
			}
			r.Actions = append(r.Actions, a)
		case *expr.Redir:
			port, ok := uint16(0), true
			if e.RegisterProtoMin != 0 {
				port, ok = immediatePort(reg(e.RegisterProtoMin))
			}
			if !ok || (e.RegisterProtoMax != 0 && e.RegisterProtoMax != e.RegisterProtoMin) {
				r.Actions = append(r.Actions, Action{Kind: ActionUnknown, What: "redirect to a port range or a port from a packet field"})
				continue
			}
			r.Actions = append(r.Actions, Action{Kind: ActionRedirect, Port: port})
		case *expr.Verdict:
			switch e.Kind {
			case expr.VerdictAccept:
				r.Actions = append(r.Actions, Action{Kind: ActionAccept})
			case expr.VerdictDrop:
				r.Actions = append(r.Actions, Action{Kind: ActionDrop})
			case expr.VerdictReturn:
				r.Actions = append(r.Actions, Action{Kind: ActionReturn})
			case expr.VerdictJump:
				r.Actions = append(r.Actions, Action{Kind: ActionJump, Chain: e.Chain})
			case expr.VerdictGoto:
				r.Actions = append(r.Actions, Action{Kind: ActionGoto, Chain: e.Chain})
			case expr.VerdictContinue:
			default:
				r.Actions = append(r.Actions, Action{Kind: ActionUnknown, What: fmt.Sprintf("verdict %d", e.Kind)})
			}
		default:
			unknownMatch("nftables expression " + raw.Name)
		}
	}
	return r, nil
}

// compat is an xt match or target as iptables-nft writes it. Its attributes are read here
// rather than by google/nftables, whose info decoders trust the blob's own counts (a REDIRECT
// info claiming billions of ranges allocates them).
type compat struct {
	target bool
	name   string
	rev    uint32
	info   []byte
}

// xtCompat reads NFTA_MATCH_NAME, _REV and _INFO (NFTA_TARGET_* have the same numbers).
func xtCompat(raw rawExpr) (compat, error) {
	c := compat{target: raw.Name == "target"}
	ad, err := netlink.NewAttributeDecoder(raw.Data)
	if err != nil {
		return c, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case 1:
			c.name = ad.String()
		case 2:
			c.rev = ad.Uint32()
		case 3:
			c.info = ad.Bytes()
		}
	}
	if err := ad.Err(); err != nil {
		return c, err
	}
	if c.name == "" {
		return c, fmt.Errorf("xt %s without a name", raw.Name)
	}
	return c, nil
}

// ctSet is `ct KEY set`, which google/nftables reads as a load; tproxy is the tproxy
// expression, which it does not read.
type (
	ctSet  struct{}
	tproxy struct{ regPort uint32 }
)

// nftExpr decodes one raw expression: with google/nftables' types for the ones this package
// evaluates, by hand for tproxy; nil for any other.
func nftExpr(fam Family, raw rawExpr) (any, error) {
	var e expr.Any
	switch raw.Name {
	case "tproxy":
		// NFTA_TPROXY_FAMILY, _REG_ADDR, _REG_PORT: be32 each.
		ad, err := netlink.NewAttributeDecoder(raw.Data)
		if err != nil {
			return nil, err
		}
		ad.ByteOrder = binary.BigEndian
		var t tproxy
		for ad.Next() {
			if ad.Type() == 3 {
				t.regPort = ad.Uint32()
			}
		}
		return t, ad.Err()
	case "ct":
		ad, err := netlink.NewAttributeDecoder(raw.Data)
		if err != nil {
			return nil, err
		}
		for ad.Next() {
			if ad.Type() == unix.NFTA_CT_SREG {
				return ctSet{}, nil
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		e = &expr.Ct{}
	case "cmp":
		e = &expr.Cmp{}
	case "meta":
		e = &expr.Meta{}
	case "payload":
		e = &expr.Payload{}
	case "bitwise":
		e = &expr.Bitwise{}
	case "immediate":
		e = &expr.Immediate{}
	case "range":
		e = &expr.Range{}
	case "lookup":
		e = &expr.Lookup{}
	case "counter":
		e = &expr.Counter{}
	case "log":
		e = &expr.Log{}
	case "redir":
		e = &expr.Redir{}
	case "match", "target":
		return xtCompat(raw)
	default:
		return nil, nil
	}
	if err := expr.Unmarshal(nftFamily(fam), raw.Data, e); err != nil {
		return nil, err
	}
	// A verdict is an immediate into the verdict register, as the library reads it too.
	if imm, ok := e.(*expr.Immediate); ok && imm.Register == unix.NFT_REG_VERDICT && len(imm.Data) == 0 {
		v := &expr.Verdict{}
		if err := expr.Unmarshal(nftFamily(fam), raw.Data, v); err != nil {
			return nil, err
		}
		return v, nil
	}
	return e, nil
}

func nftFamily(f Family) byte {
	switch f {
	case FamilyIPv4:
		return unix.NFPROTO_IPV4
	case FamilyIPv6:
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_INET
}

// immediatePort is a port an immediate put in a register, in network byte order.
func immediatePort(l *loaded) (uint16, bool) {
	if len(l.immediate) != 2 {
		return 0, false
	}
	return binary.BigEndian.Uint16(l.immediate), true
}

// portField says whether the register holds a transport port: 2 bytes at offset 0 (source) or
// 2 (destination) of the transport header, unmasked.
func portField(l *loaded) (Field, bool) {
	if !l.isPayload || l.base != expr.PayloadBaseTransportHeader || l.len != 2 || l.mask != nil {
		return 0, false
	}
	switch l.off {
	case 0:
		return FieldSrcPort, true
	case 2:
		return FieldDstPort, true
	}
	return 0, false
}

// nftCmp is the match a cmp makes of what the register holds (FieldUnknown for anything
// else).
func nftCmp(fam Family, l *loaded, op expr.CmpOp, data []byte) Match {
	unknown := Match{Field: FieldUnknown, What: fmt.Sprintf("cmp %d on %s", op, l.what)}
	eqOrNeq := op == expr.CmpOpEq || op == expr.CmpOpNeq
	m := Match{Invert: op == expr.CmpOpNeq, AbsentFails: true}
	if field, ok := portField(l); ok {
		if len(data) != 2 {
			return unknown
		}
		p := binary.BigEndian.Uint16(data)
		m.Field, m.Invert = field, false
		switch op {
		case expr.CmpOpEq:
			m.Ports = []PortRange{{p, p}}
		case expr.CmpOpNeq:
			m.Ports, m.Invert = []PortRange{{p, p}}, true
		case expr.CmpOpLt:
			if p == 0 {
				return unknown
			}
			m.Ports = []PortRange{{0, p - 1}}
		case expr.CmpOpLte:
			m.Ports = []PortRange{{0, p}}
		case expr.CmpOpGt:
			if p == 0xffff {
				return unknown
			}
			m.Ports = []PortRange{{p + 1, 0xffff}}
		case expr.CmpOpGte:
			m.Ports = []PortRange{{p, 0xffff}}
		}
		return m
	}
	if !eqOrNeq {
		return unknown
	}
	switch {
	case l.isMeta:
		switch l.meta {
		case expr.MetaKeyL4PROTO:
			if len(data) != 1 || l.mask != nil {
				return unknown
			}
			m.Field, m.Proto = FieldL4Proto, data[0]
		case expr.MetaKeyNFPROTO:
			if len(data) != 1 || l.mask != nil {
				return unknown
			}
			m.Field = FieldNFProto
			switch data[0] {
			case unix.NFPROTO_IPV4:
				m.Family = FamilyIPv4
			case unix.NFPROTO_IPV6:
				m.Family = FamilyIPv6
			default:
				return unknown
			}
		case expr.MetaKeyPROTOCOL:
			if len(data) != 2 || l.mask != nil {
				return unknown
			}
			m.Field = FieldNFProto
			switch binary.BigEndian.Uint16(data) {
			case unix.ETH_P_IP:
				m.Family = FamilyIPv4
			case unix.ETH_P_IPV6:
				m.Family = FamilyIPv6
			default:
				return unknown
			}
		case expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME:
			if l.mask != nil || len(data) == 0 || len(data) > unix.IFNAMSIZ {
				return unknown
			}
			m.Field = FieldInIface
			if l.meta == expr.MetaKeyOIFNAME {
				m.Field = FieldOutIface
			}
			if i := bytes.IndexByte(data, 0); i >= 0 {
				m.Iface = string(data[:i])
			} else {
				m.Iface, m.IfacePrefix = string(data), true
			}
		case expr.MetaKeySKUID, expr.MetaKeySKGID:
			if len(data) != 4 || l.mask != nil {
				return unknown
			}
			id := ne.Uint32(data)
			m.Field, m.IDs = FieldUID, IDRange{id, id}
			if l.meta == expr.MetaKeySKGID {
				m.Field = FieldGID
			}
		case expr.MetaKeyMARK:
			if len(data) != 4 {
				return unknown
			}
			m.Field, m.Mark, m.Mask = FieldMark, ne.Uint32(data), 0xffffffff
			if l.mask != nil {
				if len(l.mask) != 4 {
					return unknown
				}
				m.Mask = ne.Uint32(l.mask)
			}
		default:
			return unknown
		}
		return m
	case l.isPayload && l.base == expr.PayloadBaseNetworkHeader:
		var field Field
		switch {
		case l.len == 1 && (fam == FamilyIPv4 && l.off == 9 || fam == FamilyIPv6 && l.off == 6):
			if len(data) != 1 || l.mask != nil {
				return unknown
			}
			m.Field, m.Proto = FieldL4Proto, data[0]
			return m
		case l.len == 4 && l.off == 12, l.len == 16 && l.off == 8:
			field = FieldSrc
		case l.len == 4 && l.off == 16, l.len == 16 && l.off == 24:
			field = FieldDst
		default:
			return unknown
		}
		if len(data) != int(l.len) {
			return unknown
		}
		mask := l.mask
		if mask == nil {
			mask = bytes.Repeat([]byte{0xff}, len(data))
		}
		p, err := prefix(data, mask)
		if err != nil {
			return unknown
		}
		m.Field, m.Prefix = field, p
		return m
	}
	return unknown
}
