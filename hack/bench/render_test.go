package main

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestRenderNamesBothBaselines pins the forward table: every row has its ratio against kubectl over
// WebSocket and over SPDY, each in its own named column.
func TestRenderNamesBothBaselines(t *testing.T) {
	ms := time.Millisecond
	rs := []result{
		{name: "kubectl port-forward (default: WebSocket)", randomMiBps: 100, jsonMiBps: 200, keepP50: 1 * ms, keepP99: 2 * ms, newP50: 4 * ms, newP99: 8 * ms},
		{name: "kubectl port-forward (SPDY)", randomMiBps: 200, jsonMiBps: 400, keepP50: 2 * ms, keepP99: 4 * ms, newP50: 2 * ms, newP99: 4 * ms},
		{name: "trafficlab port-forward", randomMiBps: 150, jsonMiBps: 500, keepP50: 1 * ms, keepP99: 3 * ms, newP50: 3 * ms, newP99: 2 * ms},
	}
	got := render(rs, 512<<20, 500)
	_, tables, ok := strings.Cut(got, "\n\n")
	if !ok {
		t.Fatalf("render: no blank line after the method line:\n%s", got)
	}
	want := `| forwarder | random MiB/s | vs WebSocket | vs SPDY | JSON MiB/s | vs WebSocket | vs SPDY |
|---|---|---|---|---|---|---|
| kubectl port-forward (default: WebSocket) | 100 | 1.00x | 0.50x | 200 | 1.00x | 0.50x |
| kubectl port-forward (SPDY) | 200 | 2.00x | 1.00x | 400 | 2.00x | 1.00x |
| trafficlab port-forward | 150 | 1.50x | 0.75x | 500 | 2.50x | 1.25x |

| forwarder | keep-alive p50 / p99 | vs WebSocket | vs SPDY | new connection p50 / p99 | vs WebSocket | vs SPDY |
|---|---|---|---|---|---|---|
| kubectl port-forward (default: WebSocket) | 1.00 ms / 2.00 ms | 1.00x / 1.00x | 0.50x / 0.50x | 4.00 ms / 8.00 ms | 1.00x / 1.00x | 2.00x / 2.00x |
| kubectl port-forward (SPDY) | 2.00 ms / 4.00 ms | 2.00x / 2.00x | 1.00x / 1.00x | 2.00 ms / 4.00 ms | 0.50x / 0.50x | 1.00x / 1.00x |
| trafficlab port-forward | 1.00 ms / 3.00 ms | 1.00x / 1.50x | 0.50x / 0.75x | 3.00 ms / 2.00 ms | 0.75x / 0.25x | 1.50x / 0.50x |
`
	if diff := cmp.Diff(want, tables); diff != "" {
		t.Errorf("render tables (-want +got):\n%s", diff)
	}
	for _, s := range []string{"512 MiB", "500 sequential", "KUBECTL_PORT_FORWARD_WEBSOCKETS=false"} {
		if !strings.Contains(got, s) {
			t.Errorf("render's method line lacks %q:\n%s", s, got)
		}
	}
}

// TestParseTimeline: the workload suite's times come from the plugin's progress lines.
func TestParseTimeline(t *testing.T) {
	lines := []string{
		"[ 0.00s] resolving deploy/wl-3 in namespace tl-bench-1",
		"[ 0.02s] adding agents to 3 pods",
		"[ 0.03s] adding agent trafficlab-aaaaa to pod tl-bench-1/wl-3-x",
		"[ 0.06s] agent patches sent to 3 pods",
		"[ 1.72s] agent trafficlab-aaaaa running in pod wl-3-x",
		"[ 1.88s] connected to agent trafficlab-aaaaa in pod wl-3-x (session 65b85d64682a, data via port-forward over spdy)",
		"[ 2.70s] agent trafficlab-bbbbb running in pod wl-3-y",
		"[ 2.85s] connected to agent trafficlab-bbbbb in pod wl-3-y (session 18d1dd0903a6, data via port-forward over spdy)",
		"warning: something else",
		"[ 2.86s] stealing port 8080 -> 127.0.0.1:1234 (matching HTTP requests, probes excepted) on 3/3 pods of deploy/wl-3",
	}
	got, err := parseTimeline(lines)
	if err != nil {
		t.Fatal(err)
	}
	want := timeline{patchesSent: 60 * time.Millisecond, firstRunning: 1720 * time.Millisecond, lastConnected: 2850 * time.Millisecond, stealing: 2860 * time.Millisecond, pods: 3}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(timeline{}), cmp.Comparer(func(a, b time.Duration) bool { return (a - b).Abs() < time.Millisecond })); diff != "" {
		t.Errorf("timeline (-want +got):\n%s", diff)
	}
	if _, err := parseTimeline(lines[:5]); err == nil {
		t.Error("a timeline without its stealing line parsed")
	}
}
