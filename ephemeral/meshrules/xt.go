package meshrules

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// The xt extensions below are read from the same info blobs whether they come from
// iptables-legacy (the data after an xt_entry_match or xt_entry_target header) or from
// iptables-nft (the info of a compat `match` or `target` expression): one decoder for both.
// Their layouts are the kernel's uapi structs, in the host's byte order except where the struct
// says __be16/__be32.

var ne = binary.NativeEndian

// xtMatch decodes the xt match name (revision rev) into matches (the ones read here have one
// layout for IPv4 and IPv6). A match
// this package does not evaluate becomes one FieldUnknown match naming it, so that a rule set
// that needs it is refused when, and only when, a connection reaches it.
func xtMatch(name string, rev uint8, info []byte) ([]Match, error) {
	unknown := []Match{{Field: FieldUnknown, What: fmt.Sprintf("-m %s (revision %d)", name, rev)}}
	switch name {
	case "comment":
		return nil, nil
	case "tcp", "udp":
		// struct xt_tcp { __u16 spts[2], dpts[2]; __u8 option, flg_mask, flg_cmp, invflags; }
		// struct xt_udp { __u16 spts[2], dpts[2]; __u8 invflags; }
		want, inv := 12, 11
		if name == "udp" {
			want, inv = 9, 8
		}
		if len(info) < want {
			return nil, fmt.Errorf("-m %s: %d bytes of info, want %d", name, len(info), want)
		}
		if name == "tcp" && (info[8] != 0 || info[9] != 0) {
			return unknown, nil // --tcp-option, --tcp-flags
		}
		var ms []Match
		if name == "udp" {
			ms = append(ms, Match{Field: FieldL4Proto, Proto: 17})
		}
		invflags := info[inv]
		sp := PortRange{ne.Uint16(info[0:]), ne.Uint16(info[2:])}
		dp := PortRange{ne.Uint16(info[4:]), ne.Uint16(info[6:])}
		if sp != (PortRange{0, 0xffff}) || invflags&0x01 != 0 {
			ms = append(ms, Match{Field: FieldSrcPort, Ports: []PortRange{sp}, Invert: invflags&0x01 != 0})
		}
		if dp != (PortRange{0, 0xffff}) || invflags&0x02 != 0 {
			ms = append(ms, Match{Field: FieldDstPort, Ports: []PortRange{dp}, Invert: invflags&0x02 != 0})
		}
		if invflags&^0x03 != 0 {
			return unknown, nil
		}
		return ms, nil
	case "multiport":
		return xtMultiport(rev, info)
	case "owner":
		if rev != 1 {
			return unknown, nil
		}
		// struct xt_owner_match_info { __u32 uid_min, uid_max, gid_min, gid_max; __u8 match, invert; }
		if len(info) < 18 {
			return nil, fmt.Errorf("-m owner: %d bytes of info, want 18", len(info))
		}
		const ownerUID, ownerGID = 0x1, 0x2
		match, invert := info[16], info[17]
		if match&^(ownerUID|ownerGID) != 0 {
			return unknown, nil // --socket-exists, --suppl-groups
		}
		var ms []Match
		if match&ownerUID != 0 {
			ms = append(ms, Match{Field: FieldUID, IDs: IDRange{ne.Uint32(info[0:]), ne.Uint32(info[4:])}, Invert: invert&ownerUID != 0})
		}
		if match&ownerGID != 0 {
			ms = append(ms, Match{Field: FieldGID, IDs: IDRange{ne.Uint32(info[8:]), ne.Uint32(info[12:])}, Invert: invert&ownerGID != 0})
		}
		return ms, nil
	case "mark":
		if rev != 1 {
			return unknown, nil
		}
		// struct xt_mark_mtinfo1 { __u32 mark, mask; __u8 invert; }
		if len(info) < 9 {
			return nil, fmt.Errorf("-m mark: %d bytes of info, want 9", len(info))
		}
		return []Match{{Field: FieldMark, Mark: ne.Uint32(info[0:]), Mask: ne.Uint32(info[4:]), Invert: info[8] != 0}}, nil
	}
	return unknown, nil
}

func xtMultiport(rev uint8, info []byte) ([]Match, error) {
	// struct xt_multiport { __u8 flags, count; __u16 ports[15]; }
	// struct xt_multiport_v1 { __u8 flags, count; __u16 ports[15]; __u8 pflags[15]; __u8 invert; }
	const maxPorts = 15
	want := 2 + 2*maxPorts
	if rev == 1 {
		want += maxPorts + 1
	} else if rev != 0 {
		return []Match{{Field: FieldUnknown, What: fmt.Sprintf("-m multiport (revision %d)", rev)}}, nil
	}
	if len(info) < want {
		return nil, fmt.Errorf("-m multiport: %d bytes of info, want %d", len(info), want)
	}
	flags, count := info[0], int(info[1])
	if count > maxPorts {
		return nil, fmt.Errorf("-m multiport: %d ports, at most %d", count, maxPorts)
	}
	port := func(i int) uint16 { return ne.Uint16(info[2+2*i:]) }
	var ranges []PortRange
	invert := false
	for i := 0; i < count; i++ {
		if rev == 1 && info[2+2*maxPorts+i] != 0 {
			if i+1 >= count {
				return nil, fmt.Errorf("-m multiport: port range %d has no end", port(i))
			}
			ranges = append(ranges, PortRange{port(i), port(i + 1)})
			i++
			continue
		}
		ranges = append(ranges, PortRange{port(i), port(i)})
	}
	if rev == 1 {
		invert = info[2+3*maxPorts] != 0
	}
	switch flags {
	case 0:
		return []Match{{Field: FieldSrcPort, Ports: ranges, Invert: invert}}, nil
	case 1:
		return []Match{{Field: FieldDstPort, Ports: ranges, Invert: invert}}, nil
	}
	return []Match{{Field: FieldUnknown, What: "-m multiport --ports"}}, nil
}

// xtTarget decodes the xt target name (revision rev) of a family's table. The standard target
// (verdicts and jumps) and ERROR (chain heads) are iptables-legacy's own and read there.
func xtTarget(name string, rev uint8, fam Family, info []byte) (Action, error) {
	unknown := Action{Kind: ActionUnknown, What: fmt.Sprintf("-j %s (revision %d)", name, rev)}
	switch name {
	case "REDIRECT":
		if fam == FamilyIPv6 {
			// struct nf_nat_range { unsigned int flags; union nf_inet_addr min_addr, max_addr;
			// union nf_conntrack_man_proto min_proto, max_proto; }
			if len(info) < 40 {
				return Action{}, fmt.Errorf("-j REDIRECT: %d bytes of info, want 40", len(info))
			}
			return redirect(ne.Uint32(info[0:]), binary.BigEndian.Uint16(info[36:])), nil
		}
		// struct nf_nat_ipv4_multi_range_compat { unsigned int rangesize;
		// struct nf_nat_ipv4_range { unsigned int flags; __be32 min_ip, max_ip;
		// union nf_conntrack_man_proto min, max; } range[1]; }
		if len(info) < 20 {
			return Action{}, fmt.Errorf("-j REDIRECT: %d bytes of info, want 20", len(info))
		}
		if ne.Uint32(info[0:]) != 1 {
			return Action{}, fmt.Errorf("-j REDIRECT: %d ranges, want 1", ne.Uint32(info[0:]))
		}
		return redirect(ne.Uint32(info[4:]), binary.BigEndian.Uint16(info[16:])), nil
	case "TPROXY":
		// struct xt_tproxy_target_info { __u32 mark_mask, mark_value; __be32 laddr; __be16 lport; }
		// struct xt_tproxy_target_info_v1 { __u32 mark_mask, mark_value;
		// union nf_inet_addr laddr; __be16 lport; }
		off := 12
		if rev >= 1 {
			off = 24
		}
		if len(info) < off+2 {
			return Action{}, fmt.Errorf("-j TPROXY: %d bytes of info, want %d", len(info), off+2)
		}
		return Action{Kind: ActionTPROXY, Port: binary.BigEndian.Uint16(info[off:]), Mask: ne.Uint32(info[0:]), Mark: ne.Uint32(info[4:])}, nil
	case "MARK":
		if rev != 2 {
			return unknown, nil
		}
		// struct xt_mark_tginfo2 { __u32 mark, mask; }
		if len(info) < 8 {
			return Action{}, fmt.Errorf("-j MARK: %d bytes of info, want 8", len(info))
		}
		return Action{Kind: ActionSetMark, Mark: ne.Uint32(info[0:]), Mask: ne.Uint32(info[4:])}, nil
	case "ACCEPT":
		return Action{Kind: ActionAccept}, nil
	case "DROP":
		return Action{Kind: ActionDrop}, nil
	case "RETURN":
		return Action{Kind: ActionReturn}, nil
	}
	return unknown, nil
}

// redirect is REDIRECT with the range flags of its info: a port only when
// NF_NAT_RANGE_PROTO_SPECIFIED (0x2) is set, else the connection keeps its port.
func redirect(flags uint32, port uint16) Action {
	if flags&0x2 == 0 {
		port = 0
	}
	return Action{Kind: ActionRedirect, Port: port}
}

// prefix is an address and mask as the kernel stores them, turned into a prefix; a mask that is
// not a prefix (iptables allows -s 10.0.0.1/255.0.255.0) is an error.
func prefix(addr, mask []byte) (netip.Prefix, error) {
	a, ok := netip.AddrFromSlice(addr)
	if !ok || len(mask) != len(addr) {
		return netip.Prefix{}, fmt.Errorf("address of %d bytes with a mask of %d", len(addr), len(mask))
	}
	ones := 0
	for ones < len(mask)*8 && mask[ones/8]&(0x80>>(ones%8)) != 0 {
		ones++
	}
	for i := ones; i < len(mask)*8; i++ {
		if mask[i/8]&(0x80>>(i%8)) != 0 {
			return netip.Prefix{}, fmt.Errorf("mask %x is not a prefix", mask)
		}
	}
	return a.Prefix(ones)
}
