package target

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
)

func TestCompleteResource(t *testing.T) {
	names := map[kind][]string{
		kindPod:        {"web-2", "api-1", "web-1"},
		kindDeployment: {"web", "api"},
		kindService:    {"web"},
	}
	list := func(k kind) []string { return names[k] }
	tests := []struct {
		toComplete string
		want       []string
		directive  cobra.ShellCompDirective
	}{
		{"", []string{"api-1", "web-1", "web-2", "daemonsets/", "deployments/", "jobs/", "pods/", "replicasets/", "replicationcontrollers/", "services/", "statefulsets/"}, cobra.ShellCompDirectiveNoFileComp},
		{"we", []string{"web-1", "web-2"}, cobra.ShellCompDirectiveNoFileComp},
		{"de", []string{"deployments/"}, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace},
		{"deploy/", []string{"deploy/api", "deploy/web"}, cobra.ShellCompDirectiveNoFileComp},
		{"svc/w", []string{"svc/web"}, cobra.ShellCompDirectiveNoFileComp},
		{"pod/web-2", []string{"pod/web-2"}, cobra.ShellCompDirectiveNoFileComp},
		{"configmaps/", nil, cobra.ShellCompDirectiveNoFileComp},
		{"nothing", nil, cobra.ShellCompDirectiveNoFileComp},
	}
	for _, tt := range tests {
		got, directive := completeResource(tt.toComplete, list)
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("completeResource(%q) (-want +got):\n%s", tt.toComplete, diff)
		}
		if directive != tt.directive {
			t.Errorf("completeResource(%q) directive %d, want %d", tt.toComplete, directive, tt.directive)
		}
	}
}
