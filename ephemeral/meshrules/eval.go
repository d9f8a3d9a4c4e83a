package meshrules

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Conn is the first packet of a TCP connection as a netfilter hook sees it.
type Conn struct {
	// Hook is HookPrerouting for a connection arriving at the pod, HookOutput for one a process
	// in the pod opens (including to the pod's own addresses, which leave through lo).
	Hook     Hook
	Src, Dst netip.AddrPort
	// InIface is the interface a prerouting packet arrived on; OutIface the one an output
	// packet leaves by ("lo" for the pod's own addresses). The other is absent.
	InIface, OutIface string
	// UID and GID own the sending socket (output only: an arriving packet has no socket).
	UID, GID uint32
	// Mark is the packet's mark (the socket's SO_MARK for output).
	Mark uint32
}

// Fate is what the nat rules do to a connection.
type Fate uint8

const (
	// Passed: no rule captures it (it returned, was accepted, or no rule matched).
	Passed Fate = iota
	// Captured: REDIRECT or TPROXY sends it to a local port (Outcome.Port).
	Captured
	// Dropped: a rule or a policy drops it.
	Dropped
)

func (f Fate) String() string {
	return [...]string{"passed", "captured", "dropped"}[min(int(f), 2)]
}

// Outcome is a connection's fate and the rule that decided it.
type Outcome struct {
	Fate Fate
	// Port is where a captured connection goes: the proxy's port.
	Port uint16
	// TPROXY is a capture by TPROXY rather than REDIRECT.
	TPROXY bool
	// Table, Chain and Rule (1-based) name the deciding rule; Table is nil when no rule decided.
	Table *Table
	Chain string
	Rule  int
}

// String says what happened and by which rule, for messages: "captured to port 15006 by
// iptables-legacy ip nat ISTIO_IN_REDIRECT rule 1".
func (o Outcome) String() string {
	s := o.Fate.String()
	if o.Fate == Captured {
		s += fmt.Sprintf(" to port %d", o.Port)
	}
	if o.Table != nil {
		s += fmt.Sprintf(" by %s %s rule %d", o.Table, o.Chain, o.Rule)
	}
	return s
}

// maxDepth bounds jumps, as the kernel does; maxSteps bounds the rules one evaluation visits, so
// that a loop through goto, which the kernel refuses to load but a corrupt blob could describe,
// ends.
const (
	maxDepth = 64
	maxSteps = 1 << 16
)

// Evaluate runs c through the nat base chains at its hook, of every table of its family, in
// priority order, as the kernel does for a connection's first packet: the first chain that
// captures or drops it decides. It evaluates nat rules only: marks set in mangle chains are not
// applied (a mesh's REDIRECT mode sets none; its TPROXY mode is recognized by Inbound and
// refused). A rule it cannot evaluate (a match or action this package does not know) on c's
// path is an error naming it; rules off the path do not matter.
func (r *Rules) Evaluate(c Conn) (Outcome, error) {
	if c.Hook != HookPrerouting && c.Hook != HookOutput {
		return Outcome{}, fmt.Errorf("evaluate a connection at hook %s: only prerouting and output", c.Hook)
	}
	fam := FamilyIPv4
	if c.Dst.Addr().Unmap().Is6() {
		fam = FamilyIPv6
	}
	type base struct {
		t *Table
		c *Chain
	}
	var bases []base
	for _, t := range r.Tables {
		if t.Family != fam && t.Family != FamilyINet {
			continue
		}
		for _, ch := range t.Chains {
			if ch.Hook == c.Hook && ch.Type == "nat" {
				bases = append(bases, base{t, ch})
			}
		}
	}
	slices.SortStableFunc(bases, func(a, b base) int { return int(a.c.Priority) - int(b.c.Priority) })
	mark := c.Mark
	for _, b := range bases {
		o, err := run(b.t, b.c, fam, c, &mark)
		if err != nil {
			return Outcome{}, err
		}
		if o.Fate != Passed {
			return o, nil
		}
	}
	return Outcome{Fate: Passed}, nil
}

type frame struct {
	c *Chain
	i int
}

// run evaluates one base chain and the chains it jumps to.
func run(t *Table, start *Chain, fam Family, c Conn, mark *uint32) (Outcome, error) {
	stack := []frame{{start, 0}}
	for steps := 0; len(stack) > 0; steps++ {
		if steps > maxSteps {
			return Outcome{}, fmt.Errorf("%s chain %s: more than %d rules on one connection's path", t, start.Name, maxSteps)
		}
		f := &stack[len(stack)-1]
		if f.i >= len(f.c.Rules) {
			stack = stack[:len(stack)-1]
			if len(stack) == 0 && start.PolicyDrop {
				return Outcome{Fate: Dropped, Table: t, Chain: start.Name}, nil
			}
			continue
		}
		ch, idx := f.c, f.i
		rule := ch.Rules[idx]
		f.i++
		at := func(fate Fate) Outcome { return Outcome{Fate: fate, Table: t, Chain: ch.Name, Rule: idx + 1} }
		ok, err := matches(rule.Matches, fam, c, *mark)
		if err != nil {
			return Outcome{}, fmt.Errorf("%s chain %s rule %d (%s): %w", t, ch.Name, idx+1, rule, err)
		}
		if !ok {
			continue
		}
	actions:
		for _, a := range rule.Actions {
			switch a.Kind {
			case ActionSetMark:
				*mark = (*mark &^ a.Mask) ^ a.Mark
			case ActionAccept:
				return at(Passed), nil
			case ActionDrop:
				return at(Dropped), nil
			case ActionReturn:
				stack = stack[:len(stack)-1]
				if len(stack) == 0 {
					if start.PolicyDrop {
						return at(Dropped), nil
					}
					return at(Passed), nil
				}
				break actions
			case ActionJump, ActionGoto:
				target := t.Chain(a.Chain)
				if target == nil {
					return Outcome{}, fmt.Errorf("%s chain %s rule %d: %s to a chain that does not exist", t, ch.Name, idx+1, a)
				}
				if a.Kind == ActionGoto {
					stack = stack[:len(stack)-1]
				}
				if len(stack) >= maxDepth {
					return Outcome{}, fmt.Errorf("%s chain %s rule %d: jumps nest deeper than %d", t, ch.Name, idx+1, maxDepth)
				}
				stack = append(stack, frame{target, 0})
				break actions
			case ActionRedirect, ActionTPROXY:
				o := at(Captured)
				o.Port, o.TPROXY = a.Port, a.Kind == ActionTPROXY
				if o.Port == 0 {
					o.Port = c.Dst.Port()
				}
				return o, nil
			default:
				return Outcome{}, fmt.Errorf("%s chain %s rule %d (%s): cannot evaluate the action %s", t, ch.Name, idx+1, rule, a)
			}
		}
	}
	return Outcome{Fate: Passed}, nil
}

var errUnknownMatch = errors.New("cannot evaluate the match")

// matches reports whether every match holds for c.
func matches(ms []Match, fam Family, c Conn, mark uint32) (bool, error) {
	for _, m := range ms {
		ok, absent, err := match(m, fam, c, mark)
		if err != nil {
			return false, err
		}
		if absent && m.AbsentFails {
			return false, nil
		}
		if ok == m.Invert {
			return false, nil
		}
	}
	return true, nil
}

// match evaluates one match before its inversion; absent reports that the packet lacks the
// field (no socket in prerouting, no output interface yet).
func match(m Match, fam Family, c Conn, mark uint32) (ok, absent bool, err error) {
	switch m.Field {
	case FieldNFProto:
		return m.Family == fam, false, nil
	case FieldL4Proto:
		return m.Proto == 6, false, nil // Conn is TCP
	case FieldSrc:
		return m.Prefix.Contains(c.Src.Addr().Unmap()), false, nil
	case FieldDst:
		return m.Prefix.Contains(c.Dst.Addr().Unmap()), false, nil
	case FieldInIface, FieldOutIface:
		name := c.InIface
		if m.Field == FieldOutIface {
			name = c.OutIface
		}
		if m.IfacePrefix {
			return strings.HasPrefix(name, m.Iface), name == "", nil
		}
		return name == m.Iface, name == "", nil
	case FieldSrcPort, FieldDstPort:
		p := c.Src.Port()
		if m.Field == FieldDstPort {
			p = c.Dst.Port()
		}
		for _, r := range m.Ports {
			if r.From <= p && p <= r.To {
				return true, false, nil
			}
		}
		return false, false, nil
	case FieldUID, FieldGID:
		if c.Hook != HookOutput {
			// xt_owner without a socket matches only when inverted: false before inversion.
			return false, true, nil
		}
		id := c.UID
		if m.Field == FieldGID {
			id = c.GID
		}
		return m.IDs.From <= id && id <= m.IDs.To, false, nil
	case FieldMark:
		return mark&m.Mask == m.Mark, false, nil
	}
	return false, false, fmt.Errorf("%w %s", errUnknownMatch, m.What)
}
