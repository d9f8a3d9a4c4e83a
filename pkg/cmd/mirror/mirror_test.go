package mirror

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/trafficlab/kubectl-trafficlab/internal/cmdtest"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// parse runs the real cobra command line through Complete and Validate, stopping before Run.
func parse(t *testing.T, args ...string) (*Options, error) {
	t.Helper()
	streams, _, _, _ := genericiooptions.NewTestIOStreams()
	o := NewOptions(streams, cmdtest.ConfigFlags(t))
	return o, cmdtest.Parse(newCmd(o), o.Complete, o.Validate, args...)
}

func TestCompleteAndValidate(t *testing.T) {
	type parsed struct {
		Mode    string
		Percent int
		To      string
		Filter  *wire.HTTPFilter
	}
	tests := []struct {
		name    string
		args    []string
		want    parsed
		wantErr string
	}{
		{name: "defaults", args: []string{"pod/web", "--port", "8080"}, want: parsed{Mode: "sniff", Percent: 100, Filter: &wire.HTTPFilter{Match: "all"}}},
		{name: "redirect, filter, percent", args: []string{"svc/web", "-p", "80:9090", "--mode", "redirect", "--path-filter", "^/api", "--percent", "10"},
			want: parsed{Mode: "redirect", Percent: 10, Filter: &wire.HTTPFilter{Paths: []string{"^/api"}, Match: "all"}}},
		{name: "to a service", args: []string{"pod/web", "-p", "8080", "--to", "svc/canary:80", "--diff"}, want: parsed{Mode: "sniff", Percent: 100, To: "svc/canary:80", Filter: &wire.HTTPFilter{Match: "all"}}},
		{name: "to host:port", args: []string{"pod/web", "-p", "8080", "--to", "10.0.0.7:8080"}, want: parsed{Mode: "sniff", Percent: 100, To: "10.0.0.7:8080", Filter: &wire.HTTPFilter{Match: "all"}}},
		{name: "bad mode", args: []string{"pod/web", "-p", "8080", "--mode", "tap"}, wantErr: `--mode must be sniff or redirect, not "tap"`},
		{name: "unowned redirect when sniffing", args: []string{"pod/web", "-p", "8080", "--allow-unowned-redirect"}, wantErr: `--allow-unowned-redirect is for --mode redirect, not "sniff"`},
		{name: "percent 0", args: []string{"pod/web", "-p", "8080", "--percent", "0"}, wantErr: `--percent must be between 1 and 100, not 0`},
		{name: "percent 101", args: []string{"pod/web", "-p", "8080", "--percent", "101"}, wantErr: `--percent must be between 1 and 100, not 101`},
		{name: "bad to", args: []string{"pod/web", "-p", "8080", "--to", "canary"}, wantErr: `--to "canary" must be svc/NAME[:PORT] or HOST:PORT`},
		{name: "bad to port", args: []string{"pod/web", "-p", "8080", "--to", "db:0"}, wantErr: `--to "db:0": port must be 1-65535`},
		{name: "to with a local port", args: []string{"pod/web", "-p", "8080:9090", "--to", "svc/canary:80"}, wantErr: `--port REMOTE:LOCAL names a local port, but --to sends the copy elsewhere`},
		{name: "bad diff header", args: []string{"pod/web", "-p", "8080", "--diff", "--diff-header", "a b"}, wantErr: `--diff-header "a b" is not a header name`},
		{name: "bad regex", args: []string{"pod/web", "-p", "8080", "--header-filter", "^X-(a"}, wantErr: `--header-filter "^X-(a" is not a valid regular expression`},
		{name: "net raw with redirect", args: []string{"pod/web", "-p", "8080", "--mode", "redirect", "--add-net-raw"}, wantErr: `--add-net-raw is for --mode sniff`},
		{name: "no port", args: []string{"pod/web"}, wantErr: "--port is required"},
		{name: "name and selector", args: []string{"pod/web", "-l", "app=web", "-p", "8080"}, wantErr: `give TYPE/NAME "pod/web" or --selector "app=web", not both`},
		{name: "bad output", args: []string{"pod/web", "-p", "8080", "-o", "yaml"}, wantErr: `--output must be json or empty, not "yaml"`},
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
			got := parsed{Mode: o.Mirror.Mode, Percent: o.Mirror.Percent, To: o.Mirror.To, Filter: o.Mirror.Filter.Filter()}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("options (-want +got):\n%s", d)
			}
		})
	}
}
