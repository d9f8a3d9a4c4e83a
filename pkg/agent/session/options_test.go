package session

import (
	"testing"

	"github.com/google/go-cmp/cmp"

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
