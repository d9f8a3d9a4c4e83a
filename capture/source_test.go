package capture

import (
	"strings"
	"testing"
)

// TestOpenRejects covers the checks that run before any socket exists, so it needs no root.
func TestOpenRejects(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"negative snap length", Options{Interface: "lo", SnapLen: -1}, "snap length -1 out of range"},
		{"huge snap length", Options{Interface: "lo", SnapLen: DefaultSnapLen + 1}, "out of range"},
		{"bad filter", Options{Interface: "lo", Filter: &Filter{Proto: TCP}}, "port must be 1-65535"},
		{"bad protocol", Options{Interface: "lo", Filter: &Filter{Proto: 1, Port: 1}}, "unsupported protocol 1"},
		{"missing interface", Options{Interface: "nosuchif0"}, `capture interface "nosuchif0"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Open(tt.opts)
			if err == nil {
				c.Close()
				t.Fatalf("Open(%+v) succeeded", tt.opts)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Open(%+v) = %v, want error containing %q", tt.opts, err, tt.wantErr)
			}
		})
	}
}
