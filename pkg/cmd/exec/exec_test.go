package exec

import (
	"context"
	"strings"
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/trafficlab/kubectl-trafficlab/internal/cmdtest"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/inject"
)

// parse runs the real cobra command line through Complete and Validate, stopping before Run. The
// namespace check is left out: it depends on the machine, and --proxy does not need it.
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
		wantCommand []string
		wantErr     string
	}{
		{name: "command", args: []string{"deploy/api", "--proxy", "--", "./api", "-v"}, wantCommand: []string{"./api", "-v"}},
		{name: "local rules", args: []string{"deploy/api", "--proxy", "--local", "db:5432", "--local", "10.0.0.0/8", "--", "./api"}, wantCommand: []string{"./api"}},
		{name: "steal with a filter", args: []string{"deploy/api", "--proxy", "--steal", "8080", "--header-filter", "^X-Dev: me$", "--", "./api"}, wantCommand: []string{"./api"}},
		{name: "mirror", args: []string{"deploy/api", "--proxy", "--mirror", "8080:9090", "--", "./api"}, wantCommand: []string{"./api"}},
		{name: "no command", args: []string{"deploy/api", "--proxy"}, wantErr: "a command is required after --"},
		{name: "no target", args: []string{"--proxy", "--", "./api"}, wantErr: "TYPE/NAME or -l selector is required"},
		{name: "name and selector", args: []string{"deploy/api", "-l", "app=api", "--proxy", "--", "./api"}, wantErr: `give TYPE/NAME "deploy/api" or --selector "app=api", not both`},
		{name: "selector", args: []string{"-l", "app=api", "--proxy", "--", "./api"}, wantCommand: []string{"./api"}},
		{name: "local and remote", args: []string{"deploy/api", "--proxy", "--local", "db", "--remote", "redis", "--", "./api"}, wantErr: "--local"},
		{name: "bad local port", args: []string{"deploy/api", "--proxy", "--local", "db:99999", "--", "./api"}, wantErr: `invalid --local "db:99999": port must be 1-65535`},
		{name: "unowned redirect without steal", args: []string{"deploy/api", "--proxy", "--allow-unowned-redirect", "--", "./api"}, wantErr: "--allow-unowned-redirect is for --steal"},
		{name: "steal and mirror", args: []string{"deploy/api", "--proxy", "--steal", "80", "--mirror", "81", "--", "./api"}, wantErr: "--steal and --mirror cannot be combined"},
		{name: "filter without steal", args: []string{"deploy/api", "--proxy", "--path-filter", "^/api", "--", "./api"}, wantErr: "add one of them"},
		{name: "bad steal port", args: []string{"deploy/api", "--proxy", "--steal", "80:x", "--", "./api"}, wantErr: `--steal: --port "80:x": LOCAL must be a port number`},
		{name: "add NET_RAW without mirror", args: []string{"deploy/api", "--proxy", "--steal", "80", "--add-net-raw", "--", "./api"}, wantErr: "--add-net-raw is for --mirror"},
		{name: "bad filter", args: []string{"deploy/api", "--proxy", "--steal", "80", "--header-filter", "^X-(a", "--", "./api"}, wantErr: `--header-filter "^X-(a" is not a valid regular expression`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(t, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(o.Command, " ") != strings.Join(tt.wantCommand, " ") {
				t.Errorf("command %q, want %q", o.Command, tt.wantCommand)
			}
		})
	}
}

// TestStealAllowUnownedRedirect: the flag reaches the steal's spec.
func TestStealAllowUnownedRedirect(t *testing.T) {
	o, err := parse(t, "deploy/api", "--proxy", "--steal", "8080", "--allow-unowned-redirect", "--", "./api")
	if err != nil {
		t.Fatal(err)
	}
	if !o.steal.Spec().AllowUnownedRedirect {
		t.Error("the steal spec does not allow an unowned redirect")
	}
}

// --add-net-raw asks for an agent that adds NET_RAW and drops everything else, as dump and mirror do.
func TestRequest(t *testing.T) {
	for _, tt := range []struct {
		name     string
		args     []string
		wantCaps inject.Capabilities
		wantAdd  bool
	}{
		{name: "no capability", args: []string{"deploy/api", "--proxy", "--", "./api"}},
		{name: "steal", args: []string{"deploy/api", "--proxy", "--steal", "80", "--", "./api"}, wantCaps: inject.NetAdmin},
		{name: "mirror keeps the runtime's NET_RAW", args: []string{"deploy/api", "--proxy", "--mirror", "80", "--", "./api"}, wantCaps: inject.NetRaw},
		{name: "mirror adding NET_RAW", args: []string{"deploy/api", "--proxy", "--mirror", "80", "--add-net-raw", "--", "./api"}, wantCaps: inject.NetRaw, wantAdd: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(t, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			r := o.request(context.Background())
			if r.Capabilities != tt.wantCaps || r.AddNetRaw != tt.wantAdd {
				t.Errorf("request asks for %v (add NET_RAW %v), want %v (add NET_RAW %v)", r.Capabilities, r.AddNetRaw, tt.wantCaps, tt.wantAdd)
			}
		})
	}
}
