package wire

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCaptureExpr(t *testing.T) {
	tests := []struct {
		name    string
		spec    DumpSpec
		exclude []int
		want    string
	}{
		{"nothing asked, nothing to exclude", DumpSpec{}, nil, ""},
		// The case that fed on itself: a dump without a filter still leaves the tunnels out.
		{"no filter", DumpSpec{}, []int{40000}, "not ((host 127.0.0.1 or host ::1) and (tcp port 40000))"},
		{"ports", DumpSpec{Ports: []int{80}}, []int{40000}, "(port 80) and not ((host 127.0.0.1 or host ::1) and (tcp port 40000))"},
		{"filter with or", DumpSpec{Filter: "tcp or udp"}, []int{40000, 40001},
			"(tcp or udp) and not ((host 127.0.0.1 or host ::1) and (tcp port 40000 or tcp port 40001))"},
		{"ports and filter", DumpSpec{Ports: []int{80, 443}, Filter: "tcp"}, []int{40000},
			"(port 80 or port 443) and (tcp) and not ((host 127.0.0.1 or host ::1) and (tcp port 40000))"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.spec.CaptureExpr(tt.exclude)); diff != "" {
				t.Errorf("CaptureExpr (-want +got):\n%s", diff)
			}
		})
	}
}
