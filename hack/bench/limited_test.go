package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseCPUStat(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       cgroupCPU
	}{
		{"v2", "usage_usec 3821190\nuser_usec 2000000\nsystem_usec 1821190\nnr_periods 302\nnr_throttled 2\nthrottled_usec 48156\nnr_bursts 0\nburst_usec 0\n",
			cgroupCPU{usage: 3821190 * time.Microsecond, nrPeriods: 302, nrThrottled: 2, throttledTime: 48156 * time.Microsecond}},
		// v1's usage is in cpuacct.usage, read by readCgroupCPU.
		{"v1", "nr_periods 1250\nnr_throttled 2\nthrottled_time 48156387\n",
			cgroupCPU{nrPeriods: 1250, nrThrottled: 2, throttledTime: 48156387}},
		{"unknown and broken lines", "wait_sum 5\nnr_periods\nnr_throttled x\n\n", cgroupCPU{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, parseCPUStat(tc.text), cmp.AllowUnexported(cgroupCPU{})); diff != "" {
				t.Errorf("parseCPUStat (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseVMRSS(t *testing.T) {
	for _, tc := range []struct {
		text string
		want int64
		ok   bool
	}{
		{"Name:\ttrafficlab-agen\nVmHWM:\t   60000 kB\nVmRSS:\t   13332 kB\nRssAnon:\t 8000 kB\n", 13332 << 10, true},
		{"Name:\tx\n", 0, false},
		{"VmRSS:\t  -5 kB\n", 0, false},
		{"VmRSS:\t  lots kB\n", 0, false},
	} {
		got, err := parseVMRSS(tc.text)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseVMRSS(%q) = %d, %v; want %d, ok %v", tc.text, got, err, tc.want, tc.ok)
		}
	}
}

// FuzzParseCPUStat: any text gives counters without a panic; a text without a known name gives zero.
func FuzzParseCPUStat(f *testing.F) {
	f.Add("usage_usec 1\nnr_periods 2\nnr_throttled 1\nthrottled_usec 7\n")
	f.Add("throttled_time 99999999999999999999\nnr_periods -1\n")
	f.Fuzz(func(t *testing.T, text string) {
		c := parseCPUStat(text)
		if c != (cgroupCPU{}) && !containsAny(text, "usage_usec", "nr_periods", "nr_throttled", "throttled_usec", "throttled_time") {
			t.Errorf("parsed %+v from a text without a known name: %q", c, text)
		}
	})
}

// FuzzParseVMRSS: any text gives a size or an error, never a panic or a negative size.
func FuzzParseVMRSS(f *testing.F) {
	f.Add("VmRSS:\t   13332 kB\n")
	f.Add("VmRSS: 9223372036854775807 kB")
	f.Fuzz(func(t *testing.T, text string) {
		if rss, err := parseVMRSS(text); err == nil && rss < 0 {
			t.Errorf("parseVMRSS(%q) = %d", text, rss)
		}
	})
}

func containsAny(s string, subs ...string) bool {
	return slices.ContainsFunc(subs, func(x string) bool { return strings.Contains(s, x) })
}
