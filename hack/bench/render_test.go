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
