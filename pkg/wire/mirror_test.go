package wire

import "testing"

func TestMirrorStatsSummary(t *testing.T) {
	tests := []struct {
		s    MirrorStats
		want string
	}{
		{MirrorStats{Requests: 1, Connections: 1, Mirrored: 1, Answered: 1, KernelReceived: 10},
			"1 request seen on 1 connection, 1 mirrored, 1 answered; kernel dropped 0 of 10 packets"},
		{MirrorStats{Requests: 100, Connections: 3, Mirrored: 40, Answered: 39, Differ: 2, Probes: 5, SampledOut: 50, DroppedSlow: 5, Failed: 1},
			"100 requests seen on 3 connections, 40 mirrored, 39 answered, 2 differed; not mirrored or unanswered: 5 kubelet probes, 50 sampled out, 5 copy too slow, 1 no answer from the copy"},
	}
	for _, tt := range tests {
		if got := tt.s.Summary(); got != tt.want {
			t.Errorf("Summary() = %q\nwant        %q", got, tt.want)
		}
	}
	if err := (&MirrorSpec{Ports: []int{80}, Percent: 101}).Validate(); err == nil {
		t.Error("percent 101 accepted")
	}
	if err := (&MirrorSpec{Ports: []int{80}, Mode: "tap"}).Validate(); err == nil {
		t.Error("mode tap accepted")
	}
	if err := (&MirrorSpec{Ports: []int{80}, To: "svc:0"}).Validate(); err == nil {
		t.Error("destination port 0 accepted")
	}
}
