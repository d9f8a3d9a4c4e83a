package main

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseLinks(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		in      string
		want    []linkSpec
		wantErr string
	}{
		{in: "100mbit/30ms,1gbit/5ms", want: []linkSpec{{rate: 100e6, rtt: 30 * ms}, {rate: 1e9, rtt: 5 * ms}}},
		{in: " 10mbit/0s , 2500kbit/1s", want: []linkSpec{{rate: 10e6}, {rate: 2.5e6, rtt: time.Second}}},
		{in: "10gbit/2s", want: []linkSpec{{rate: 1e10, rtt: 2 * time.Second}}},
		{in: "1000kbit/1ms", want: []linkSpec{{rate: 1e6, rtt: ms}}},
		{in: "", wantErr: `"" is not RATE/RTT`},
		{in: "100mbit", wantErr: `"100mbit" is not RATE/RTT`},
		{in: "100mbit/30ms,", wantErr: `"" is not RATE/RTT`},
		{in: "100Mbit/30ms", wantErr: `rate "100Mbit" is not a whole number`},
		{in: "1.5mbit/30ms", wantErr: `rate "1.5mbit" is not a whole number`},
		{in: "100mbps/30ms", wantErr: `rate "100mbps" is not a whole number`},
		{in: "999kbit/30ms", wantErr: `rate "999kbit" is outside 1mbit..10gbit`},
		{in: "11gbit/30ms", wantErr: `rate "11gbit" is outside 1mbit..10gbit`},
		{in: "999999999999gbit/1ms", wantErr: `outside 1mbit..10gbit`},
		{in: "100mbit/30", wantErr: `round-trip time "30": time: missing unit`},
		{in: "100mbit/-1ms", wantErr: `round-trip time "-1ms" is not a whole number of milliseconds`},
		{in: "100mbit/1500us", wantErr: `round-trip time "1500us" is not a whole number of milliseconds`},
		{in: "100mbit/3s", wantErr: `round-trip time "3s" is not a whole number of milliseconds from 0 to 2s`},
		{in: "100mbit/30ms/1", wantErr: `round-trip time "30ms/1"`},
	}
	for _, tt := range tests {
		got, err := parseLinks(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "--links: ") {
				t.Errorf("parseLinks(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseLinks(%q): %v", tt.in, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(linkSpec{})); diff != "" {
			t.Errorf("parseLinks(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestLinkString(t *testing.T) {
	for in, want := range map[string]string{
		"100mbit/30ms":  "100mbit/30ms",
		"1000mbit/5ms":  "1gbit/5ms",
		"2500kbit/0s":   "2500kbit/0s",
		"10gbit/2000ms": "10gbit/2s",
	} {
		l, err := parseLink(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.String(); got != want {
			t.Errorf("parseLink(%q).String() = %q, want %q", in, got, want)
		}
	}
}

func TestTransferBytes(t *testing.T) {
	ms := time.Millisecond
	for _, tt := range []struct {
		l    linkSpec
		d    time.Duration
		want int64
	}{
		{linkSpec{rate: 100e6, rtt: 30 * ms}, 4 * time.Second, 47 << 20}, // 50 MB
		{linkSpec{rate: 1e9, rtt: 5 * ms}, 4 * time.Second, 476 << 20},   // 500 MB
		{linkSpec{rate: 1e6}, time.Second, 1 << 20},                      // never below 1 MiB
	} {
		if got := tt.l.transferBytes(tt.d); got != tt.want {
			t.Errorf("%s.transferBytes(%s) = %d MiB, want %d MiB", tt.l, tt.d, got>>20, tt.want>>20)
		}
	}
}

func TestTBFArgs(t *testing.T) {
	for _, tt := range []struct {
		l    string
		want []string
	}{
		// 100 Mbit/s is 12.5 MB/s: 2 ms is 25 kB, under the 64 KiB floor; 50 ms of queue is 625 kB.
		{"100mbit/30ms", []string{"qdisc", "add", "dev", "veth0", "root", "tbf", "rate", "100000000bit", "burst", "65536", "limit", "690536"}},
		// 1 Gbit/s is 125 MB/s: 2 ms is 250 kB; 50 ms is 6.25 MB.
		{"1gbit/5ms", []string{"qdisc", "add", "dev", "veth0", "root", "tbf", "rate", "1000000000bit", "burst", "250000", "limit", "6500000"}},
	} {
		l, err := parseLink(tt.l)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tt.want, tbfArgs("veth0", l)); diff != "" {
			t.Errorf("tbfArgs(%s) (-want +got):\n%s", tt.l, diff)
		}
	}
}

func TestLatencyToxics(t *testing.T) {
	lat := func(name, stream string, ms int) toxic {
		return toxic{Name: name, Type: "latency", Stream: stream, Toxicity: 1, Attributes: map[string]int{"latency": ms, "jitter": 0}}
	}
	for _, tt := range []struct {
		rtt  time.Duration
		want []toxic
	}{
		{30 * time.Millisecond, []toxic{lat("latency_upstream", "upstream", 15), lat("latency_downstream", "downstream", 15)}},
		{5 * time.Millisecond, []toxic{lat("latency_upstream", "upstream", 2), lat("latency_downstream", "downstream", 3)}},
		{time.Millisecond, []toxic{lat("latency_upstream", "upstream", 0), lat("latency_downstream", "downstream", 1)}},
		{0, nil},
	} {
		if diff := cmp.Diff(tt.want, latencyToxics(tt.rtt)); diff != "" {
			t.Errorf("latencyToxics(%s) (-want +got):\n%s", tt.rtt, diff)
		}
	}
}

// TestRenderLinkTargets pins the targets table: each target's ratio against kubectl over SPDY (the
// second forwarder) and its verdict, per link, judged as printed (10.97/11 is 1.00x, which meets ≥ 1.0x).
func TestRenderLinkTargets(t *testing.T) {
	ms := time.Millisecond
	rs := []result{
		{name: "kubectl port-forward (default: WebSocket)", randomMiBps: 10, jsonMiBps: 10, keepP50: 31 * ms, keepP99: 33 * ms, newP50: 62 * ms, newP99: 70 * ms},
		{name: "kubectl port-forward (SPDY)", randomMiBps: 11, jsonMiBps: 11, keepP50: 30 * ms, keepP99: 32 * ms, newP50: 61 * ms, newP99: 66 * ms},
		{name: "trafficlab port-forward", randomMiBps: 10.97, jsonMiBps: 33, keepP50: 33 * ms, keepP99: 35 * ms, newP50: 31 * ms, newP99: 40 * ms},
		{name: "trafficlab port-forward --data-path exec", randomMiBps: 5, jsonMiBps: 30, keepP50: 34 * ms, keepP99: 36 * ms, newP50: 32 * ms, newP99: 41 * ms},
	}
	slow := append([]result(nil), rs...)
	slow[2].jsonMiBps, slow[2].randomMiBps, slow[2].keepP50, slow[3].randomMiBps = 22, 10, 34*ms, 5.4
	runs := []linkRun{
		{spec: linkSpec{rate: 100e6, rtt: 30 * ms}, check: linkCheck{down: 95.6e6, up: 95.5e6, proxied: 94e6, rtt: 31 * ms}, bytes: 47 << 20, rs: rs},
		{spec: linkSpec{rate: 1e9, rtt: 5 * ms}, check: linkCheck{down: 950e6, up: 951e6, proxied: 700e6, rtt: 6 * ms}, bytes: 476 << 20, rs: slow},
	}
	got := renderLinks(runs, linkOptions{seconds: 4 * time.Second, requests: 200})
	_, targets, ok := strings.Cut(got, "#### Targets")
	if !ok {
		t.Fatalf("renderLinks: no targets table:\n%s", got)
	}
	want := ` (trafficlab port-forward vs kubectl port-forward over SPDY, same run)

| link | JSON bulk ≥ 3x | random bulk ≥ 1.0x | kept-alive p50 ≤ 1.1x | exec fallback, random bulk ≥ 0.5x |
|---|---|---|---|---|
| 100mbit/30ms | 3.00x met | 1.00x met | 1.10x met | 0.45x missed |
| 1gbit/5ms | 2.00x missed | 0.91x missed | 1.13x missed | 0.49x missed |
`
	if diff := cmp.Diff(want, targets); diff != "" {
		t.Errorf("targets table (-want +got):\n%s", diff)
	}
	for _, s := range []string{"#### 100mbit/30ms", "down 95.6 Mbit/s, up 95.5 Mbit/s; down through the proxy as well 94.0 Mbit/s; round trip through the proxy p50 31.00 ms", "downloads of 47 MiB", "#### 1gbit/5ms", "downloads of 476 MiB", "4s of the link's rate"} {
		if !strings.Contains(got, s) {
			t.Errorf("renderLinks lacks %q:\n%s", s, got)
		}
	}
}
