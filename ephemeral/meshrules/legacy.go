package meshrules

import (
	"bytes"
	"errors"
	"fmt"
)

// iptables-legacy's tables are blobs of entries the kernel hands out with getsockopt
// IPT_SO_GET_ENTRIES (IP6T_ for IPv6), located by IPT_SO_GET_INFO's hook_entry and underflow
// offsets (legacy_linux.go). This file parses them without the kernel, so golden blobs and the
// fuzzer drive it.

// Sizes and offsets of the uapi structs, identical on every 64-bit and 32-bit Linux ABI Go
// supports (the entries align to 8 bytes because of their __u64 counters).
const (
	// struct ipt_entry { struct ipt_ip ip; unsigned int nfcache; __u16 target_offset,
	// next_offset; unsigned int comefrom; struct xt_counters counters; unsigned char elems[0]; }
	iptEntrySize = 112
	// struct ip6t_entry: the same around struct ip6t_ip6.
	ip6tEntrySize = 168
	// struct xt_entry_match / xt_entry_target: __u16 size; char name[29]; __u8 revision;
	xtHeaderSize = 32
	// struct xt_error_target: the header and char errorname[30].
	xtErrorNameLen = 30

	// XT_RETURN is the standard target's verdict for RETURN: -NF_REPEAT - 1.
	xtReturn = -5
)

// legacyInfo is what IPT_SO_GET_INFO says about a table: where each hook's chain starts
// (HookEntry) and where its policy entry is (Underflow), as byte offsets into the entries, for
// the hooks in ValidHooks (bit h for NF_INET hook h).
type legacyInfo struct {
	ValidHooks uint32
	HookEntry  [5]uint32
	Underflow  [5]uint32
}

var hookNames = [5]string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// parseLegacy turns a table's entries blob into its chains: the built-in ones with their hooks
// (in hook order), then the user chains in blob order. Priority and Type are the table's
// (iptables-legacy registers nat at -100, mangle at -150, like iptables-nft's chains).
func parseLegacy(fam Family, table string, info legacyInfo, blob []byte) (*Table, error) {
	// target_offset and next_offset follow the ipt_ip (84 bytes) or ip6t_ip6 (136 with its
	// padding) and nfcache.
	entrySize, offsetsAt := iptEntrySize, 88
	if fam == FamilyIPv6 {
		entrySize, offsetsAt = ip6tEntrySize, 140
	}
	// First pass: the entries' offsets and the user chains' heads.
	type entry struct {
		off, targetOff, next int
	}
	var entries []entry
	index := map[int]int{} // offset -> entry number
	for off := 0; off < len(blob); {
		if len(blob)-off < entrySize {
			return nil, fmt.Errorf("entry at %d: %d bytes left, an entry has %d", off, len(blob)-off, entrySize)
		}
		targetOff := int(ne.Uint16(blob[off+offsetsAt:]))
		next := int(ne.Uint16(blob[off+offsetsAt+2:]))
		if targetOff < entrySize || targetOff+xtHeaderSize > next || next > len(blob)-off || next%8 != 0 {
			return nil, fmt.Errorf("entry at %d: target at %d, next entry at %d of %d bytes", off, targetOff, next, len(blob)-off)
		}
		index[off] = len(entries)
		entries = append(entries, entry{off, targetOff, next})
		off += next
	}
	if len(entries) == 0 {
		return nil, errors.New("no entries")
	}

	t := &Table{Source: SourceLegacy, Family: fam, Name: table}
	chainType, prio := "nat", int32(-100)
	if table == "mangle" {
		chainType, prio = "filter", -150
	}
	// Which chain each entry belongs to: a built-in chain from its hook_entry to its underflow
	// (the policy entry), a user chain from the entry after its ERROR head up to the next head.
	owner := make([]*Chain, len(entries))
	policy := make([]bool, len(entries))
	for h := 0; h < 5; h++ {
		if info.ValidHooks&(1<<h) == 0 {
			continue
		}
		start, ok1 := index[int(info.HookEntry[h])]
		end, ok2 := index[int(info.Underflow[h])]
		if !ok1 || !ok2 || end < start {
			return nil, fmt.Errorf("%s: hook entry %d and underflow %d are not entries in order", hookNames[h], info.HookEntry[h], info.Underflow[h])
		}
		c := &Chain{Name: hookNames[h], Hook: Hook(h + 1), Type: chainType, Priority: prio}
		if chainType == "filter" && h == 3 {
			c.Type = "route"
		}
		for i := start; i <= end; i++ {
			if owner[i] != nil {
				return nil, fmt.Errorf("%s: entry at %d belongs to chain %s too", hookNames[h], entries[i].off, owner[i].Name)
			}
			owner[i] = c
		}
		policy[end] = true
		t.Chains = append(t.Chains, c)
	}
	heads := map[int]string{} // offset of a user chain's first entry -> its name
	var cur *Chain
	for i, e := range entries {
		name, rev, data := xtEntry(blob[e.off+e.targetOff : e.off+e.next])
		if owner[i] != nil {
			cur = nil
			continue
		}
		if name == "ERROR" {
			if i == len(entries)-1 {
				break // the table's end
			}
			chain := string(bytes.TrimRight(data[:min(len(data), xtErrorNameLen)], "\x00"))
			if chain == "" || rev != 0 {
				return nil, fmt.Errorf("entry at %d: chain head without a name", e.off)
			}
			cur = &Chain{Name: chain}
			t.Chains = append(t.Chains, cur)
			heads[entries[i+1].off] = chain
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("entry at %d is in no chain", e.off)
		}
		owner[i] = cur
	}

	// Second pass: the rules.
	for i, e := range entries {
		c := owner[i]
		if c == nil {
			continue
		}
		raw := blob[e.off : e.off+e.next]
		r, err := parseLegacyEntry(fam, raw, entrySize, e.targetOff, e.off, heads)
		if err != nil {
			return nil, fmt.Errorf("chain %s, entry at %d: %w", c.Name, e.off, err)
		}
		if policy[i] {
			if len(r.Matches) != 0 || len(r.Actions) != 1 || (r.Actions[0].Kind != ActionAccept && r.Actions[0].Kind != ActionDrop) {
				return nil, fmt.Errorf("chain %s: policy %q is not ACCEPT or DROP", c.Name, r)
			}
			c.PolicyDrop = r.Actions[0].Kind == ActionDrop
			continue
		}
		// A user chain ends with an unconditional RETURN that iptables adds; it changes nothing.
		if c.Hook == HookNone && (i+1 == len(entries) || owner[i+1] != c) &&
			len(r.Matches) == 0 && len(r.Actions) == 1 && r.Actions[0].Kind == ActionReturn {
			continue
		}
		c.Rules = append(c.Rules, r)
	}
	return t, nil
}

// xtEntry splits an xt_entry_match or xt_entry_target into its name, revision and data.
func xtEntry(b []byte) (name string, rev uint8, data []byte) {
	if len(b) < xtHeaderSize {
		return "", 0, nil
	}
	size := min(int(ne.Uint16(b)), len(b))
	name = string(bytes.TrimRight(b[2:31], "\x00"))
	return name, b[31], b[xtHeaderSize:max(size, xtHeaderSize)]
}

// parseLegacyEntry reads one entry: its ipt_ip (or ip6t_ip6) part, its matches and its target.
func parseLegacyEntry(fam Family, raw []byte, entrySize, targetOff, off int, heads map[int]string) (Rule, error) {
	var r Rule
	ipLen, flagsOff := 4, 82 // struct ipt_ip: 4 addresses, 4 interface fields, __u16 proto, __u8 flags, invflags
	if fam == FamilyIPv6 {
		ipLen, flagsOff = 16, 131 // struct ip6t_ip6: ..., __u16 proto; __u8 tos (130), flags, invflags
	}
	addrs := raw[:4*ipLen]
	ifaces := raw[4*ipLen : 4*ipLen+64]
	proto := ne.Uint16(raw[4*ipLen+64:])
	flags, invflags := raw[flagsOff], raw[flagsOff+1]
	const (
		invIn, invOut, invSrc, invDst, invFrag, invProto = 0x01, 0x02, 0x08, 0x10, 0x20, 0x40
	)
	gotoFlag := uint8(0x02) // IPT_F_GOTO
	if fam == FamilyIPv6 {
		gotoFlag = 0x04 // IP6T_F_GOTO
	}
	for i, field := range []Field{FieldSrc, FieldDst} {
		addr, mask := addrs[i*ipLen:(i+1)*ipLen], addrs[(2+i)*ipLen:(3+i)*ipLen]
		inv := invflags&(invSrc<<i) != 0
		if !inv && bytes.Count(mask, []byte{0}) == len(mask) {
			continue
		}
		p, err := prefix(addr, mask)
		if err != nil {
			return r, err
		}
		r.Matches = append(r.Matches, Match{Field: field, Prefix: p, Invert: inv})
	}
	for i, field := range []Field{FieldInIface, FieldOutIface} {
		name, mask := ifaces[i*16:(i+1)*16], ifaces[(2+i)*16:(3+i)*16]
		n := 0
		for n < 16 && mask[n] != 0 {
			n++
		}
		if n == 0 {
			continue
		}
		m := Match{Field: field, Invert: invflags&(invIn<<i) != 0}
		if name[n-1] == 0 {
			m.Iface = string(bytes.TrimRight(name[:n], "\x00"))
		} else {
			m.Iface, m.IfacePrefix = string(name[:n]), true
		}
		r.Matches = append(r.Matches, m)
	}
	if invflags&invFrag != 0 || (fam == FamilyIPv4 && flags&0x01 != 0) {
		r.Matches = append(r.Matches, Match{Field: FieldUnknown, What: "-f"})
	}
	if fam == FamilyIPv6 && flags&0x02 != 0 {
		r.Matches = append(r.Matches, Match{Field: FieldUnknown, What: "--tos"})
	}
	if proto != 0 && (fam == FamilyIPv4 || flags&0x01 != 0) {
		if proto > 255 {
			return r, fmt.Errorf("protocol %d", proto)
		}
		r.Matches = append(r.Matches, Match{Field: FieldL4Proto, Proto: uint8(proto), Invert: invflags&invProto != 0})
	}

	for m := entrySize; m < targetOff; {
		if targetOff-m < xtHeaderSize {
			return r, fmt.Errorf("match at %d: %d bytes left", m, targetOff-m)
		}
		size := int(ne.Uint16(raw[m:]))
		if size < xtHeaderSize || m+size > targetOff {
			return r, fmt.Errorf("match at %d of %d bytes overruns the target at %d", m, size, targetOff)
		}
		name, rev, data := xtEntry(raw[m : m+size])
		ms, err := xtMatch(name, rev, data)
		if err != nil {
			return r, err
		}
		r.Matches = append(r.Matches, ms...)
		m += size
	}

	name, rev, data := xtEntry(raw[targetOff:])
	if int(ne.Uint16(raw[targetOff:])) > len(raw)-targetOff {
		return r, fmt.Errorf("target of %d bytes overruns the entry", ne.Uint16(raw[targetOff:]))
	}
	if name != "" {
		a, err := xtTarget(name, rev, fam, data)
		if err != nil {
			return r, err
		}
		r.Actions = append(r.Actions, a)
		return r, nil
	}
	// The standard target: a verdict (negative) or the offset of the entry to jump to.
	if len(data) < 4 {
		return r, fmt.Errorf("standard target of %d bytes", len(data)+xtHeaderSize)
	}
	v := int32(ne.Uint32(data))
	switch {
	case v == xtReturn:
		r.Actions = append(r.Actions, Action{Kind: ActionReturn})
	case v == -1: // -NF_DROP - 1
		r.Actions = append(r.Actions, Action{Kind: ActionDrop})
	case v == -2: // -NF_ACCEPT - 1
		r.Actions = append(r.Actions, Action{Kind: ActionAccept})
	case v >= 0:
		if int(v) == off+len(raw) && flags&gotoFlag == 0 {
			return r, nil // a jump to the next entry: iptables' rule without -j, which only counts
		}
		chain, ok := heads[int(v)]
		if !ok {
			return r, fmt.Errorf("jump to offset %d, which starts no chain", v)
		}
		kind := ActionJump
		if flags&gotoFlag != 0 {
			kind = ActionGoto
		}
		r.Actions = append(r.Actions, Action{Kind: kind, Chain: chain})
	default:
		r.Actions = append(r.Actions, Action{Kind: ActionUnknown, What: fmt.Sprintf("verdict %d", v)})
	}
	return r, nil
}

// parseLegacyBlob reads what getLegacy returns: a struct ipt_getinfo (ip6t_getinfo is the same)
// and the table's entries.
func parseLegacyBlob(fam Family, table string, b []byte) (*Table, error) {
	if len(b) < 84 {
		return nil, fmt.Errorf("table info of %d bytes, want 84", len(b))
	}
	var info legacyInfo
	info.ValidHooks = ne.Uint32(b[32:])
	for h := 0; h < 5; h++ {
		info.HookEntry[h] = ne.Uint32(b[36+4*h:])
		info.Underflow[h] = ne.Uint32(b[56+4*h:])
	}
	size := ne.Uint32(b[80:])
	if int64(size) != int64(len(b)-84) {
		return nil, fmt.Errorf("table info says %d bytes of entries, got %d", size, len(b)-84)
	}
	return parseLegacy(fam, table, info, b[84:])
}
