package main

import (
	"strings"
	"testing"
)

// FuzzParseTimeline: whatever the plugin prints, the parser returns an error or a timeline whose
// steps come in the order it requires (every step seen before "stealing"), never a panic.
func FuzzParseTimeline(f *testing.F) {
	f.Add("[ 0.06s] agent patches sent to 3 pods\n[ 1.72s] agent trafficlab-a running in pod p\n[ 1.88s] connected to agent trafficlab-a in pod p (session 1)\n[ 2.86s] stealing port 8080")
	f.Add("[ 1e9s] agent patches sent to 99999999999999999999 pods\n[NaNs] stealing x")
	f.Add("[-1s] stealing ")
	f.Fuzz(func(t *testing.T, text string) {
		tl, err := parseTimeline(strings.Split(text, "\n"))
		if err != nil {
			return
		}
		if !strings.Contains(text, "stealing ") || !strings.Contains(text, "agent patches sent to ") {
			t.Errorf("parsed %+v from a text without its lines: %q", tl, text)
		}
	})
}
