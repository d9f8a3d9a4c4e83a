package portforward

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/trafficlab/kubectl-trafficlab/internal/cmdtest"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/local/forward"
)

// parse runs the real cobra command line through Complete and Validate, stopping before Run.
func parse(t *testing.T, args ...string) (*Options, error) {
	t.Helper()
	streams, _, _, _ := genericiooptions.NewTestIOStreams()
	o := NewOptions(streams, cmdtest.ConfigFlags(t))
	return o, cmdtest.Parse(newCmd(o), o.Complete, o.Validate, args...)
}

func TestCompleteAndValidate(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantTarget target.Options
		wantSpecs  []forward.Spec
		wantErr    string
	}{
		{
			name:       "pod and two forwards",
			args:       []string{"pod/web", "8080:80", "redis:6379/udp"},
			wantTarget: target.Options{Namespace: "shop", Resource: "pod/web"},
			wantSpecs: []forward.Spec{
				{LocalPort: 8080, Host: "localhost", Port: 80, Protocol: "tcp"},
				{LocalPort: 6379, Host: "redis", Port: 6379, Protocol: "udp"},
			},
		},
		{
			name:       "selector and container",
			args:       []string{"-l", "app=web", "-c", "app", "9000:db.data:5432"},
			wantTarget: target.Options{Namespace: "shop", Selector: "app=web", Container: "app"},
			wantSpecs:  []forward.Spec{{LocalPort: 9000, Host: "db.data", Port: 5432, Protocol: "tcp"}},
		},
		{name: "no target", args: []string{}, wantErr: "TYPE/NAME or -l selector is required"},
		{name: "no forward", args: []string{"pod/web"}, wantErr: "at least one [LOCAL_PORT:]HOST:PORT[/udp] is required"},
		{name: "bad forward", args: []string{"pod/web", "80:x:y"}, wantErr: `invalid forward "80:x:y": remote port "y"`},
		{name: "bad address", args: []string{"--address", "myhost", "pod/web", "80"}, wantErr: `--address "myhost" is not an IP address or localhost`},
		{name: "bad data path", args: []string{"--data-path", "carrier-pigeon", "pod/web", "80"}, wantErr: `--data-path must be auto, portforward or exec, not "carrier-pigeon"`},
		{name: "bad transport", args: []string{"--transport", "http3", "pod/web", "80"}, wantErr: `--transport: unknown transport protocol "http3"`},
		{name: "bad pull policy", args: []string{"--image-pull-policy", "Sometimes", "pod/web", "80"}, wantErr: `--image-pull-policy must be Always, IfNotPresent or Never, not "Sometimes"`},
		{name: "too many data connections", args: []string{"--data-connections", "99", "pod/web", "80"}, wantErr: "--data-connections must be from 1 to 16, not 99"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(t, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error %q is not one line", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantTarget, o.Target); diff != "" {
				t.Errorf("target mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantSpecs, o.Specs); diff != "" {
				t.Errorf("specs mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
