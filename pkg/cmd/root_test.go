package cmd

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/trafficlab/kubectl-trafficlab/pkg/version"
)

func execute(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	streams, _, out, errOut := genericiooptions.NewTestIOStreams()
	root := NewCmdTrafficlab(streams)
	root.SetArgs(args)
	err = root.Execute()
	return out.String(), errOut.String(), err
}

func TestVersion(t *testing.T) {
	info := version.Get()
	const mirrored = "registry.example.com/mirror/trafficlab-agent:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name    string
		args    []string
		env     string // $TRAFFICLAB_AGENT_IMAGE
		want    string
		wantErr string
	}{
		{
			name: "plain",
			args: []string{"version"},
			// The test binary is built without a release's ldflags: unpinned.
			want: "Plugin Version: " + info.Version + "\nAgent Image: " + info.AgentImage +
				"\nAgent Image Pinned: no (a build from source, not a release: the tag alone names the image)\n",
		},
		{
			name: "yaml",
			args: []string{"version", "-o", "yaml"},
			want: "agentImage: " + info.AgentImage + "\nagentImagePinned: false\nagentImageSource: built in\ngoVersion: " + info.GoVersion + "\nversion: " + info.Version + "\n",
		},
		{
			name: "the environment's image is the one the commands add",
			args: []string{"version"},
			env:  mirrored,
			want: "Plugin Version: " + info.Version + "\nAgent Image: " + mirrored +
				"\nAgent Image Pinned: yes (by the digest it names)\nAgent Image Source: $TRAFFICLAB_AGENT_IMAGE (built in: " + info.AgentImage + ")\n",
		},
		{
			name: "the environment's image as json",
			args: []string{"version", "-o", "json"},
			env:  mirrored,
			want: "{\n  \"version\": \"" + info.Version + "\",\n  \"agentImage\": \"" + mirrored + "\",\n  \"agentImagePinned\": true,\n  \"agentImageSource\": \"$TRAFFICLAB_AGENT_IMAGE\",\n  \"builtInAgentImage\": \"" + info.AgentImage + "\",\n  \"goVersion\": \"" + info.GoVersion + "\"\n}\n",
		},
		{
			name:    "a bad environment image is refused",
			args:    []string{"version"},
			env:     "registry.example.com/a b",
			wantErr: `$TRAFFICLAB_AGENT_IMAGE "registry.example.com/a b" is not a valid image reference: invalid reference format`,
		},
		{
			name:    "unknown output",
			args:    []string{"version", "--output", "xml"},
			wantErr: `--output must be 'yaml' or 'json', not "xml"`,
		},
		{
			name:    "no arguments",
			args:    []string{"version", "extra"},
			wantErr: `unknown command "extra" for "kubectl trafficlab version"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(version.AgentImageEnv, tt.env)
			out, _, err := execute(t, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if diff := cmp.Diff(tt.want, out); diff != "" {
				t.Errorf("output mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestVersionJSON(t *testing.T) {
	out, _, err := execute(t, "version", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got version.Info
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output is not json: %v\n%s", err, out)
	}
	if diff := cmp.Diff(version.Get(), got); diff != "" {
		t.Errorf("json mismatch (-want +got):\n%s", diff)
	}
}

// TestVersionJSONMakefileParse: `make agent-image` tags the image with what its sed expression finds in
// `version -o json`. The test runs that very expression, read from the Makefile, on the command's
// output, so a change to the JSON layout (field name, spacing, one field per line) that would tag the
// image wrongly fails here rather than in a cluster that cannot pull the agent.
func TestVersionJSONMakefileParse(t *testing.T) {
	makefile, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	parse := regexp.MustCompile(`version -o json \| sed -n '([^']+)'`).FindSubmatch(makefile)
	if parse == nil {
		t.Fatal("the Makefile no longer reads the agent image with `version -o json | sed -n '...'`; update this test with it")
	}
	expr := strings.ReplaceAll(string(parse[1]), "$$", "$") // make's escape for a literal $
	out, _, err := execute(t, "version", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	sed := exec.Command("sed", "-n", expr)
	sed.Stdin = strings.NewReader(out)
	got, err := sed.Output()
	if err != nil {
		t.Fatalf("sed -n %q: %v", expr, err)
	}
	if want := version.Get().AgentImage + "\n"; string(got) != want {
		t.Errorf("the Makefile's parse of\n%s\nfinds %q, want %q", out, got, want)
	}
}

// kubectl users expect its connection flags and -v; klog's other flags would only clutter the help.
func TestRootFlags(t *testing.T) {
	streams, _, _, _ := genericiooptions.NewTestIOStreams()
	root := NewCmdTrafficlab(streams)
	for _, name := range []string{"namespace", "context", "kubeconfig", "as", "as-group", "cluster", "user", "server", "request-timeout", "v"} {
		if root.PersistentFlags().Lookup(name) == nil {
			t.Errorf("flag --%s is missing", name)
		}
	}
	for short, long := range map[string]string{"n": "namespace", "v": "v", "s": "server"} {
		f := root.PersistentFlags().ShorthandLookup(short)
		if f == nil || f.Name != long {
			t.Errorf("-%s should be --%s, got %v", short, long, f)
		}
	}
	root.PersistentFlags().VisitAll(func(f *pflag.Flag) {
		for _, klogOnly := range []string{"logtostderr", "alsologtostderr", "log_dir", "log_file", "skip_headers", "stderrthreshold", "vmodule", "add_dir_header", "one_output"} {
			if f.Name == klogOnly {
				t.Errorf("klog flag --%s must not be exposed", f.Name)
			}
		}
	})
}

func TestFlagErrorsPointToHelp(t *testing.T) {
	_, _, err := execute(t, "version", "--bogus")
	if err == nil {
		t.Fatal("want an error for an unknown flag")
	}
	want := "unknown flag: --bogus\nSee 'kubectl trafficlab version -h' for help and examples"
	if err.Error() != want {
		t.Errorf("error = %q, want %q", err.Error(), want)
	}
}

func TestUnknownCommand(t *testing.T) {
	_, _, err := execute(t, "stael")
	if err == nil || !strings.Contains(err.Error(), `unknown command "stael"`) {
		t.Fatalf("error = %v, want unknown command", err)
	}
}

func TestCompletion(t *testing.T) {
	for shell, marker := range map[string]string{
		"bash": "__start_kubectl-trafficlab",
		"zsh":  "#compdef kubectl-trafficlab",
		"fish": "complete -c kubectl-trafficlab",
	} {
		t.Run(shell, func(t *testing.T) {
			out, _, err := execute(t, "completion", shell)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, marker) {
				t.Errorf("completion %s output lacks %q", shell, marker)
			}
		})
	}
}

// kubectl's plugin completion calls `kubectl-trafficlab __complete <words>`; the verbs must come back.
func TestHiddenCompleteListsVerbs(t *testing.T) {
	out, _, err := execute(t, "__complete", "ver")
	if err != nil {
		t.Fatal(err)
	}
	first := strings.SplitN(out, "\n", 2)[0]
	if !strings.HasPrefix(first, "version\t") {
		t.Errorf("first completion = %q, want version", first)
	}
}

func TestHelpUsesDisplayName(t *testing.T) {
	out, _, err := execute(t, "--help")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "kubectl trafficlab [command]") {
		t.Errorf("help does not use the display name:\n%s", out)
	}
	if strings.Contains(out, "kubectl-trafficlab [command]") {
		t.Errorf("help shows the binary name instead of the display name")
	}
}

// TestCompletionFromTheCluster: every command that takes TYPE/NAME completes it from the cluster (here an API
// server that knows one pod), `sessions end` after the session ID, and every -o offers the formats
// its help names.
func TestCompletionFromTheCluster(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		items := `[]`
		if r.URL.Path == "/api/v1/namespaces/shop/pods" {
			items = `[{"metadata":{"name":"web-1","namespace":"shop"}}]`
		}
		fmt.Fprintf(w, `{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1","metadata":{},"items":%s}`, items)
	}))
	t.Cleanup(api.Close)
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "none"))
	complete := func(t *testing.T, words ...string) []string {
		t.Helper()
		out, _, err := execute(t, append([]string{"__complete", "--server", api.URL, "-n", "shop"}, words...)...)
		if err != nil {
			t.Fatalf("__complete %q: %v", words, err)
		}
		var comps []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if !strings.HasPrefix(l, ":") { // the last line is cobra's directive
				comps = append(comps, strings.SplitN(l, "\t", 2)[0])
			}
		}
		return comps
	}

	root := NewCmdTrafficlab(genericiooptions.NewTestIOStreamsDiscard())
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		for _, sub := range c.Commands() {
			walk(sub, append(slices.Clip(path), sub.Name()))
		}
		if len(path) == 0 || c.Hidden {
			return
		}
		t.Run(strings.Join(path, " "), func(t *testing.T) {
			if strings.Contains(c.Use, "TYPE/NAME") {
				words := path
				if strings.HasPrefix(c.Use, "end ID") {
					if got := complete(t, append(slices.Clip(path), "")...); len(got) != 0 {
						t.Errorf("the session ID was completed with %q", got)
					}
					words = append(slices.Clip(path), "abcdef")
				}
				got := complete(t, append(slices.Clip(words), "")...)
				if !slices.Contains(got, "web-1") || !slices.Contains(got, "deployments/") {
					t.Errorf("TYPE/NAME completions = %q, want the pod web-1 and the kinds", got)
				}
			}
			if c.Flags().Lookup("output") != nil {
				if _, ok := c.GetFlagCompletionFunc("output"); !ok {
					t.Errorf("-o has no completion")
				}
			}
			c.Flags().VisitAll(func(f *pflag.Flag) {
				if _, ok := c.GetFlagCompletionFunc(f.Name); !ok {
					return
				}
				got := complete(t, append(slices.Clip(path), "--"+f.Name, "")...)
				if len(got) == 0 {
					t.Errorf("--%s completes nothing", f.Name)
				}
				for _, v := range got {
					if !strings.Contains(f.Usage, v) {
						t.Errorf("--%s completes %q, which its help (%q) does not name", f.Name, v, f.Usage)
					}
				}
			})
		})
	}
	walk(root, nil)
	if !slices.Contains(paths, "/api/v1/namespaces/shop/pods") {
		t.Errorf("the API server was asked for %q, never for the pods of shop", paths)
	}
}
