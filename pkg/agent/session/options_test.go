package session

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"

	"github.com/trafficlab/kubectl-trafficlab/pkg/version"
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

func TestAgentImageFlags(t *testing.T) {
	builtIn := version.Get()
	tag := strings.TrimPrefix(builtIn.AgentImage, version.AgentImageRepository+":")
	tests := []struct {
		name    string
		env     string
		args    []string
		want    version.AgentImage
		wantErr string
	}{
		{
			name: "the built-in image by default",
			want: version.AgentImage{Ref: builtIn.AgentImage, Pinned: builtIn.AgentImagePinned, Source: version.SourceBuiltIn},
		},
		{
			name: "the environment's image as the default",
			env:  "registry.example.com/mirror/trafficlab-agent:v1@" + testDigest,
			want: version.AgentImage{Ref: "registry.example.com/mirror/trafficlab-agent:v1@" + testDigest, Pinned: true, Source: version.SourceEnv},
		},
		{
			name: "--agent-image over the environment",
			env:  "registry.example.com/mirror/trafficlab-agent:v1",
			args: []string{"--agent-image", "example.test/agent:v2"},
			want: version.AgentImage{Ref: "example.test/agent:v2", Source: version.SourceFlag},
		},
		{
			name: "--agent-registry moves the built-in image, over the environment",
			env:  "registry.example.com/other:v1",
			args: []string{"--agent-registry", "registry.example.com/mirror"},
			want: version.AgentImage{Ref: "registry.example.com/mirror/trafficlab-agent:" + tag, Pinned: builtIn.AgentImagePinned, Source: version.SourceRegistry},
		},
		{
			name:    "--agent-image and --agent-registry together are refused",
			args:    []string{"--agent-registry", "registry.example.com/mirror", "--agent-image", "example.test/agent:v2"},
			wantErr: "--agent-image and --agent-registry cannot be used together: --agent-registry moves the released image to another registry, --agent-image names the image itself",
		},
		{
			name:    "a bad --agent-image is refused, quoted",
			args:    []string{"--agent-image", "example.test/agent:v2:v3"},
			wantErr: `--agent-image "example.test/agent:v2:v3" is not a valid image reference: invalid reference format`,
		},
		{
			name:    "an empty --agent-image is refused",
			args:    []string{"--agent-image="},
			wantErr: "--agent-image must not be empty",
		},
		{
			name:    "a bad environment image is refused, naming the variable",
			env:     "example.test/UPPER:v1",
			wantErr: `$TRAFFICLAB_AGENT_IMAGE "example.test/UPPER:v1" is not a valid image reference: invalid reference format: repository name (UPPER) must be lowercase`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(version.AgentImageEnv, tt.env)
			o := NewOptions()
			if err := pflagSet(&o).Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			err := o.Validate()
			if errString(err) != tt.wantErr {
				t.Fatalf("Validate() = %q, want %q", errString(err), tt.wantErr)
			}
			if err != nil {
				return
			}
			got, _ := o.Image()
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Image() (-want +got):\n%s", diff)
			}
			spec, err := o.AgentSpec(0, false)
			if err != nil {
				t.Fatal(err)
			}
			if spec.Image != tt.want.Ref {
				t.Errorf("AgentSpec().Image = %q, want %q", spec.Image, tt.want.Ref)
			}
		})
	}
}

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
