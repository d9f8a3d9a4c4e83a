package session

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

func TestAgentMemoryBudgetFlag(t *testing.T) {
	for _, tc := range []struct {
		value   string
		want    int64
		wantErr string
	}{
		{value: NewOptions().AgentMemoryBudget, want: wire.DefaultAgentMemoryBudget},
		{value: "256Mi", want: 256 << 20},
		{value: "1G", want: 1e9},
		{value: "lots", wantErr: `--agent-memory-budget must be a size such as 256Mi, not "lots"`},
		{value: "8Mi", wantErr: `--agent-memory-budget must be at least 64Mi (the agent's own baseline), not "8Mi"`},
	} {
		o := NewOptions()
		o.AgentMemoryBudget = tc.value
		err := o.Validate()
		if tc.wantErr != "" {
			if err == nil || err.Error() != tc.wantErr {
				t.Errorf("%q: error %v, want %q", tc.value, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.value, err)
			continue
		}
		got, _ := agentMemoryBudget(tc.value)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%q: bytes (-want +got):\n%s", tc.value, diff)
		}
	}
	// The default is what --help shows.
	if got := NewOptions().AgentMemoryBudget; got != "128Mi" {
		t.Errorf("default %q, want 128Mi", got)
	}
}

func TestReconnectGraceFlag(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    time.Duration
		wantErr string
	}{
		{args: nil, want: time.Minute},
		{args: []string{"--reconnect-grace=0"}, want: 0},
		{args: []string{"--reconnect-grace", "5s"}, want: 5 * time.Second},
		{args: []string{"--reconnect-grace=10m"}, want: 10 * time.Minute},
		{args: []string{"--reconnect-grace=-1s"}, wantErr: `--reconnect-grace must be from 0 to 10m0s, not "-1s"`},
		{args: []string{"--reconnect-grace=11m"}, wantErr: `--reconnect-grace must be from 0 to 10m0s, not "11m0s"`},
	} {
		o := NewOptions()
		fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		err := o.Validate()
		if tc.wantErr != "" {
			if err == nil || err.Error() != tc.wantErr {
				t.Errorf("%q: error %v, want %q", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if diff := cmp.Diff(tc.want, o.ReconnectGrace); diff != "" {
			t.Errorf("%q: grace (-want +got):\n%s", tc.args, diff)
		}
	}
}
