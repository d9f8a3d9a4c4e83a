package steal

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/trafficlab/kubectl-trafficlab/internal/cmdtest"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
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
		name        string
		args        []string
		wantPorts   []target.PortSpec
		wantCommand []string
		wantErr     string
	}{
		{name: "port only", args: []string{"pod/web", "--port", "80"}, wantPorts: []target.PortSpec{{Remote: "80", Port: 80, Local: 80}}},
		{name: "remote and local", args: []string{"pod/web", "-p", "80:8080", "-p", "9090"}, wantPorts: []target.PortSpec{{Remote: "80", Port: 80, Local: 8080}, {Remote: "9090", Port: 9090, Local: 9090}}},
		{name: "named port", args: []string{"svc/web", "--port", "http:8080"}, wantPorts: []target.PortSpec{{Remote: "http", Local: 8080}}},
		{name: "command", args: []string{"pod/web", "--port", "80", "--", "sh", "-c", "exit 3"}, wantPorts: []target.PortSpec{{Remote: "80", Port: 80, Local: 80}}, wantCommand: []string{"sh", "-c", "exit 3"}},
		{name: "look-ahead filter", args: []string{"pod/web", "--port", "80", "--header-filter", "^User-Agent: (?!kube-probe)"}, wantPorts: []target.PortSpec{{Remote: "80", Port: 80, Local: 80}}},
		{name: "no port", args: []string{"pod/web"}, wantErr: "--port is required"},
		{name: "no target", args: []string{"--port", "80"}, wantErr: "TYPE/NAME or -l selector is required"},
		{name: "two targets", args: []string{"pod/web", "pod/db", "--port", "80"}, wantErr: "steal takes one TYPE/NAME"},
		{name: "port out of range", args: []string{"pod/web", "--port", "70000"}, wantErr: `--port "70000": port 70000 is out of range 1-65535`},
		{name: "bad local", args: []string{"pod/web", "--port", "80:x"}, wantErr: `--port "80:x": LOCAL must be a port number`},
		{name: "named without local", args: []string{"pod/web", "--port", "http"}, wantErr: `a named port needs a LOCAL port`},
		{name: "bad regex", args: []string{"pod/web", "--port", "80", "--header-filter", "^X-(a"}, wantErr: `--header-filter "^X-(a" is not a valid regular expression`},
		{name: "bad path regex", args: []string{"pod/web", "--port", "80", "--path-filter", "[z-a]"}, wantErr: `--path-filter "[z-a]" is not a valid regular expression`},
		{name: "bad match", args: []string{"pod/web", "--port", "80", "--match", "some"}, wantErr: `--match must be all or any, not "some"`},
		{name: "bad output", args: []string{"pod/web", "--port", "80", "-o", "yaml"}, wantErr: `--output must be json or empty, not "yaml"`},
		{name: "bad local address", args: []string{"pod/web", "--port", "80", "--local-address", "example"}, wantErr: `--local-address "example" is not an IP address`},
		{name: "flush on the node's network", args: []string{"pod/web", "--port", "80", "--flush-connections", "--allow-host-network"}, wantErr: "--flush-connections cannot be used with --allow-host-network"},
		{name: "flush in a pod", args: []string{"pod/web", "--port", "80", "--flush-connections"}, wantPorts: []target.PortSpec{{Remote: "80", Port: 80, Local: 80}}},
		{name: "host network without flush", args: []string{"pod/web", "--port", "80", "--allow-host-network", "--allow-unowned-redirect"}, wantPorts: []target.PortSpec{{Remote: "80", Port: 80, Local: 80}}},
		{name: "bad detect timeout", args: []string{"pod/web", "--port", "80", "--detect-timeout", "0s"}, wantErr: `--detect-timeout must be between`},
		{name: "workload flags", args: []string{"deploy/web", "--port", "80", "--max-pods", "3", "--one-pod"}, wantPorts: []target.PortSpec{{Remote: "80", Port: 80, Local: 80}}},
		{name: "no pods", args: []string{"deploy/web", "--port", "80", "--max-pods", "0"}, wantErr: `--max-pods must be at least 1, not 0`},
		{name: "bad head timeout", args: []string{"pod/web", "--port", "80", "--head-timeout", "100ms"}, wantErr: `--head-timeout must be between 1s and 10m, not "100ms"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(t, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is not one line: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantPorts, o.Steal.Ports()); diff != "" {
				t.Errorf("ports (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantCommand, o.Command); diff != "" {
				t.Errorf("command (-want +got):\n%s", diff)
			}
		})
	}
}
