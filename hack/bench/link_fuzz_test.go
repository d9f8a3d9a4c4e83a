package main

import (
	"testing"
	"time"
)

// FuzzParseLinks: whatever --links says, the parser returns an error or links within bounds that
// print back to themselves, never a panic.
func FuzzParseLinks(f *testing.F) {
	f.Add("100mbit/30ms,1gbit/5ms")
	f.Add("2500kbit/0s")
	f.Add("999999999999gbit/1ms")
	f.Add("1mbit/1h,/")
	f.Fuzz(func(t *testing.T, s string) {
		links, err := parseLinks(s)
		if err != nil {
			return
		}
		for _, l := range links {
			if l.rate < minLinkRate || l.rate > maxLinkRate || l.rtt < 0 || l.rtt > maxLinkRTT || l.rtt%time.Millisecond != 0 {
				t.Errorf("parseLinks(%q) gave %+v, out of bounds", s, l)
			}
			back, err := parseLink(l.String())
			if err != nil || back != l {
				t.Errorf("parseLink(%q) = %+v, %v; want %+v", l.String(), back, err, l)
			}
			if args := tbfArgs("x", l); len(args) != 12 {
				t.Errorf("tbfArgs(%s) = %q", l, args)
			}
		}
	})
}
