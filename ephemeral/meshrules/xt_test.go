package meshrules

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// le builds an info blob from native-endian fields (this test runs on little-endian machines
// only, as the kernel structs are host-endian) and big-endian ports.
func le(fields ...any) []byte {
	var b []byte
	for _, f := range fields {
		switch v := f.(type) {
		case uint8:
			b = append(b, v)
		case uint16:
			b = ne.AppendUint16(b, v)
		case uint32:
			b = ne.AppendUint32(b, v)
		case be16:
			b = binary.BigEndian.AppendUint16(b, uint16(v))
		case []byte:
			b = append(b, v...)
		}
	}
	return b
}

type be16 uint16

func TestXtMatch(t *testing.T) {
	multiport := func(flags, count uint8, ports []uint16, pflags []uint8, invert uint8) []byte {
		b := le(flags, count)
		for i := range 15 {
			p := uint16(0)
			if i < len(ports) {
				p = ports[i]
			}
			b = le(b, p)
		}
		for i := range 15 {
			f := uint8(0)
			if i < len(pflags) {
				f = pflags[i]
			}
			b = append(b, f)
		}
		return append(b, invert)
	}
	for _, c := range []struct {
		name string
		rev  uint8
		info []byte
		want []Match
	}{
		{"tcp", 0, le(uint16(0), uint16(0xffff), uint16(15008), uint16(15008), uint8(0), uint8(0), uint8(0), uint8(0x02)),
			[]Match{{Field: FieldDstPort, Ports: []PortRange{{15008, 15008}}, Invert: true}}},
		{"tcp", 0, le(uint16(1000), uint16(2000), uint16(0), uint16(0xffff), uint8(0), uint8(0), uint8(0), uint8(0)),
			[]Match{{Field: FieldSrcPort, Ports: []PortRange{{1000, 2000}}}}},
		{"tcp", 0, le(uint16(0), uint16(0xffff), uint16(0), uint16(0xffff), uint8(0), uint8(0x12), uint8(0x02), uint8(0)),
			[]Match{{Field: FieldUnknown, What: "-m tcp (revision 0)"}}},
		{"multiport", 1, multiport(1, 3, []uint16{4190, 4567, 4568}, []uint8{0, 1}, 0),
			[]Match{{Field: FieldDstPort, Ports: []PortRange{{4190, 4190}, {4567, 4568}}}}},
		{"multiport", 1, multiport(0, 1, []uint16{53}, nil, 1),
			[]Match{{Field: FieldSrcPort, Ports: []PortRange{{53, 53}}, Invert: true}}},
		{"owner", 1, le(uint32(1337), uint32(1337), uint32(7), uint32(9), uint8(3), uint8(1)),
			[]Match{{Field: FieldUID, IDs: IDRange{1337, 1337}, Invert: true}, {Field: FieldGID, IDs: IDRange{7, 9}}}},
		{"owner", 1, le(uint32(0), uint32(0), uint32(0), uint32(0), uint8(4), uint8(0)),
			[]Match{{Field: FieldUnknown, What: "-m owner (revision 1)"}}},
		{"mark", 1, le(uint32(0x10), uint32(0xff), uint8(1)),
			[]Match{{Field: FieldMark, Mark: 0x10, Mask: 0xff, Invert: true}}},
		{"comment", 0, make([]byte, 256), nil},
		{"statistic", 0, make([]byte, 32), []Match{{Field: FieldUnknown, What: "-m statistic (revision 0)"}}},
	} {
		got, err := xtMatch(c.name, c.rev, c.info)
		if err != nil {
			t.Errorf("xtMatch(%s): %v", c.name, err)
			continue
		}
		if diff := cmp.Diff(c.want, got, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
			t.Errorf("xtMatch(%s) (-want +got):\n%s", c.name, diff)
		}
	}
	if _, err := xtMatch("owner", 1, make([]byte, 17)); err == nil {
		t.Error("xtMatch(owner) with a short info: no error")
	}
}

func TestXtTarget(t *testing.T) {
	for _, c := range []struct {
		name string
		rev  uint8
		fam  Family
		info []byte
		want Action
	}{
		// nf_nat_ipv4_multi_range_compat: rangesize 1, flags PROTO_SPECIFIED, min/max ip, ports.
		{"REDIRECT", 0, FamilyIPv4, le(uint32(1), uint32(2), uint32(0), uint32(0), be16(15006), be16(15006)),
			Action{Kind: ActionRedirect, Port: 15006}},
		{"REDIRECT", 0, FamilyIPv4, le(uint32(1), uint32(0), uint32(0), uint32(0), be16(0), be16(0)),
			Action{Kind: ActionRedirect}},
		// nf_nat_range: flags, two 16-byte addresses, ports.
		{"REDIRECT", 0, FamilyIPv6, le(uint32(2), make([]byte, 32), be16(4143), be16(4143)),
			Action{Kind: ActionRedirect, Port: 4143}},
		// xt_tproxy_target_info_v1: mark mask, mark value, 16-byte address, port.
		{"TPROXY", 1, FamilyIPv4, le(uint32(0xffffffff), uint32(1337), make([]byte, 16), be16(15006)),
			Action{Kind: ActionTPROXY, Port: 15006, Mark: 1337, Mask: 0xffffffff}},
		{"MARK", 2, FamilyIPv4, le(uint32(1337), uint32(0xffffffff)), Action{Kind: ActionSetMark, Mark: 1337, Mask: 0xffffffff}},
		{"CONNMARK", 1, FamilyIPv4, make([]byte, 16), Action{Kind: ActionUnknown, What: "-j CONNMARK (revision 1)"}},
	} {
		got, err := xtTarget(c.name, c.rev, c.fam, c.info)
		if err != nil {
			t.Errorf("xtTarget(%s): %v", c.name, err)
			continue
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("xtTarget(%s %s) (-want +got):\n%s", c.name, c.fam, diff)
		}
	}
}

func TestPrefix(t *testing.T) {
	p, err := prefix([]byte{127, 0, 0, 6}, []byte{255, 255, 255, 255})
	if err != nil || p != netip.MustParsePrefix("127.0.0.6/32") {
		t.Errorf("prefix(127.0.0.6/32) = %v, %v", p, err)
	}
	p, err = prefix([]byte{10, 1, 0, 0}, []byte{255, 255, 0, 0})
	if err != nil || p != netip.MustParsePrefix("10.1.0.0/16") {
		t.Errorf("prefix(10.1.0.0/16) = %v, %v", p, err)
	}
	if _, err := prefix([]byte{10, 0, 0, 1}, []byte{255, 0, 255, 0}); err == nil {
		t.Error("prefix with mask 255.0.255.0: no error")
	}
}
