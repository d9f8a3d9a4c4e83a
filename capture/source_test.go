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
		{"negative ring size", Options{Interface: "lo", RingSize: -1}, "ring size -1 out of range"},
		{"huge ring size", Options{Interface: "lo", RingSize: maxRingSize + 1}, "out of range"},
		{"ring too small for the snap length", Options{Interface: "lo", RingSize: 1 << 20}, "ring size 1048576 too small for snap length 262144: it needs at least 2097152 bytes"},
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

func TestRingGeometry(t *testing.T) {
	tests := []struct {
		snapLen, size     int
		blockSize, blocks int
	}{
		// A block holds the largest frame whole: 64 KiB offloaded frames and more.
		{DefaultSnapLen, 0, 512 << 10, 16},
		{DefaultSnapLen, 3 << 20, 512 << 10, 6}, // rounded down to whole blocks
		{DefaultSnapLen, 2 << 20, 512 << 10, 4},
		{65535, 0, 128 << 10, 64},
		{128 << 10, 0, 256 << 10, 32},
		{96, 0, 128 << 10, 64},
		{96, 1 << 20, 128 << 10, 8},
	}
	for _, tt := range tests {
		blockSize, blocks, err := ringGeometry(tt.snapLen, tt.size)
		if err != nil || blockSize != tt.blockSize || blocks != tt.blocks {
			t.Errorf("ringGeometry(%d, %d) = %d, %d, %v; want %d blocks of %d", tt.snapLen, tt.size, blockSize, blocks, err, tt.blocks, tt.blockSize)
		}
		if blockSize < tt.snapLen+frameOverhead || blockSize&(blockSize-1) != 0 {
			t.Errorf("ringGeometry(%d, %d): block size %d cannot hold a whole frame or is not a power of two", tt.snapLen, tt.size, blockSize)
		}
	}
}
