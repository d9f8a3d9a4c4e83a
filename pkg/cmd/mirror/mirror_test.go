package mirror

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes/fake"

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
		{name: "percent 0", args: []string{"pod/web", "-p", "8080", "--percent", "0"}, wantErr: `--percent must be between 1 and 100, not 0`},
		{name: "percent 101", args: []string{"pod/web", "-p", "8080", "--percent", "101"}, wantErr: `--percent must be between 1 and 100, not 101`},
		{name: "bad to", args: []string{"pod/web", "-p", "8080", "--to", "canary"}, wantErr: `--to "canary" must be svc/NAME:PORT or HOST:PORT`},
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
			got := parsed{Mode: o.Mode, Percent: o.Percent, To: o.To, Filter: o.Filter.Filter()}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("options (-want +got):\n%s", d)
			}
		})
	}
}

// TestResolveTo: --to svc/NAME:PORT becomes the Service's cluster IP and port (by number or name),
// a headless Service its DNS name; a missing Service or port is refused before anything changes.
func TestResolveTo(t *testing.T) {
	client := fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "canary", Namespace: "ns"}, Spec: corev1.ServiceSpec{
			ClusterIP: "10.96.0.9", Ports: []corev1.ServicePort{{Name: "web", Port: 80}},
		}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "headless", Namespace: "ns"}, Spec: corev1.ServiceSpec{
			ClusterIP: "None", Ports: []corev1.ServicePort{{Port: 8080}},
		}},
	)
	tests := []struct{ to, want, wantErr string }{
		{to: "svc/canary:80", want: "10.96.0.9:80"},
		{to: "service/canary:web", want: "10.96.0.9:80"},
		{to: "svc/headless:8080", want: "headless.ns.svc:8080"},
		{to: "10.1.2.3:9000", want: "10.1.2.3:9000"},
		{to: "svc/nope:80", wantErr: `--to "svc/nope:80": service "nope" not found in namespace "ns"`},
		{to: "svc/canary:81", wantErr: `--to "svc/canary:81": service "canary" has no port "81"`},
	}
	for _, tt := range tests {
		o := &Options{To: tt.to, client: client}
		got, err := o.resolveTo(context.Background(), "ns")
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("%s: error %v, want %q", tt.to, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: %q, %v; want %q", tt.to, got, err, tt.want)
		}
	}
}

// TestPrinterBatchesLines: a burst of lines reaches the output in one write, without a flush from
// the caller, and every line is there.
func TestPrinterBatchesLines(t *testing.T) {
	w := &cmdtest.CountingWriter{}
	p := newPrinter(w, true, false)
	for i := range 100 {
		p.print(wire.MirrorEvent{Kind: wire.EventMirrored, Method: "GET", Path: fmt.Sprintf("/%d", i), Status: 200})
	}
	// No flush here: the lines leave on lineout's timer.
	deadline := time.Now().Add(5 * time.Second)
	for _, out := w.State(); strings.Count(out, "\n") < 100; _, out = w.State() {
		if time.Now().After(deadline) {
			t.Fatalf("after 5s the output has %d lines, want 100", strings.Count(out, "\n"))
		}
		time.Sleep(time.Millisecond)
	}
	w.CheckBatched(t, 100)
}

// TestCountsFallBackToTheLastReport: the final counts win when they come; when they are late, or
// the events end without them, the agent's last partial report is what the user gets.
func TestCountsFallBackToTheLastReport(t *testing.T) {
	partial := &wire.MirrorStats{Requests: 10, Partial: true}
	later := &wire.MirrorStats{Requests: 20, Partial: true}
	final := &wire.MirrorStats{Requests: 25}
	tests := []struct {
		name  string
		feed  []*wire.MirrorStats
		ended bool
		want  *wire.MirrorStats
	}{
		{"final counts", []*wire.MirrorStats{partial, later, final}, true, final},
		{"final counts late", []*wire.MirrorStats{partial, later}, false, later},
		{"events ended without final counts", []*wire.MirrorStats{partial}, true, partial},
		{"no counts at all", nil, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCounts()
			for _, s := range tt.feed {
				c.add(s)
			}
			if tt.ended {
				c.end()
			}
			if got := c.wait(50 * time.Millisecond); got != tt.want {
				t.Errorf("wait = %+v, want %+v", got, tt.want)
			}
		})
	}
}
