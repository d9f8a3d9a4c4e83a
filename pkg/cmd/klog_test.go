package cmd

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

// klogLine is klog's header: severity, date, time, thread id, file:line.
var klogLine = regexp.MustCompile(`^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ([^ ]+:\d+)\] `)

// TestKlogFollowsVerbosity runs the root command with -v as a user would, and a subcommand that logs
// the way client-go does: klog's unconditional lines (Error, Warning, Info without V, and
// apimachinery's default error handler, which client-go's stream readers report through) show only
// from -v=4; V(n) lines from -v=n.
func TestKlogFollowsVerbosity(t *testing.T) {
	logAll := func() {
		klog.Errorf("Unknown stream id %d, discarding message", 1)
		klog.Warning("a warning")
		klog.Info("an info")
		klog.ErrorS(errors.New("boom"), "a structured error")
		klog.V(2).Info("at two")
		klog.V(5).InfoS("at five", "k", "v")
		klog.Background().Info("contextual at zero")
		utilruntime.HandleErrorWithContext(context.Background(), errors.New("stream closed"), "reading a stream")
	}
	all := []string{"Unknown stream id 1, discarding message", "a warning", "an info", "a structured error", "at two", "at five", "contextual at zero", "reading a stream"}
	tests := []struct {
		v    string
		want []string // the messages printed, in order
	}{
		{"0", nil},
		{"2", []string{"at two"}},
		{"3", []string{"at two"}},
		{"4", []string{"Unknown stream id 1, discarding message", "a warning", "an info", "a structured error", "at two", "contextual at zero", "reading a stream"}},
		{"6", all},
	}
	for _, tt := range tests {
		t.Run("v="+tt.v, func(t *testing.T) {
			streams, _, out, errOut := genericiooptions.NewTestIOStreams()
			root := NewCmdTrafficlab(streams)
			t.Cleanup(func() {
				// -v and the logger are klog's process-wide state.
				_ = root.PersistentFlags().Set("v", "0")
				klog.ClearLogger()
			})
			root.AddCommand(&cobra.Command{Use: "logs", RunE: func(*cobra.Command, []string) error {
				logAll()
				return nil
			}})
			root.SetArgs([]string{"-v=" + tt.v, "logs"})
			var err error
			direct := captureStderr(t, func() {
				err = root.Execute()
				klog.Flush()
			})
			if err != nil {
				t.Fatal(err)
			}
			if out.Len() != 0 || direct != "" {
				t.Errorf("klog wrote past the command's error stream: stdout %q, the process's stderr %q", out, direct)
			}
			var got []string
			for _, line := range strings.Split(strings.TrimSuffix(errOut.String(), "\n"), "\n") {
				if line == "" {
					continue
				}
				m := klogLine.FindStringSubmatch(line)
				if m == nil {
					t.Errorf("line %q is not in klog's format", line)
					continue
				}
				// The caller klog names is the line that logged, not a frame of the sink.
				if !strings.HasPrefix(m[1], "klog_test.go:") {
					t.Errorf("line %q names %s as its caller, want klog_test.go", line, m[1])
				}
				for _, w := range all {
					if strings.Contains(line, w) {
						got = append(got, w)
						break
					}
				}
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("-v=%s printed %q, want the lines of %q:\n%s", tt.v, got, tt.want, errOut)
			}
		})
	}
}

// captureStderr returns what f wrote to the process's stderr, where klog writes when no logger is set.
func captureStderr(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stderr
	os.Stderr = w
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(r)
		got <- string(b)
	}()
	defer func() {
		os.Stderr = saved
		_ = w.Close()
		_ = r.Close()
	}()
	f()
	os.Stderr = saved
	_ = w.Close()
	return <-got
}

// TestAPIWarningsReachTheUser: the API server's warnings do not go through klog (where they would wait
// for -v=4) but to the error stream as kubectl prints them, once each.
func TestAPIWarningsReachTheUser(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Warning", `299 - "would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"`)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"kind":"Pod","apiVersion":"v1","metadata":{"name":"target","namespace":"ns"}}`)
	}))
	t.Cleanup(srv.Close)
	streams, _, _, errOut := genericiooptions.NewTestIOStreams()
	NewCmdTrafficlab(streams)
	t.Cleanup(func() {
		klog.ClearLogger()
		rest.SetDefaultWarningHandler(rest.WarningLogger{})
	})
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := cs.CoreV1().Pods("ns").Get(context.Background(), "target", metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if want := "Warning: would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false\n"; errOut.String() != want {
		t.Errorf("error stream %q, want %q", errOut, want)
	}
}
