package version

import (
	"strings"
	"testing"

	"github.com/distribution/reference"
	"github.com/google/go-cmp/cmp"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func released() Info {
	return resolve("v0.3.0", testDigest, nil)
}

func TestRehosted(t *testing.T) {
	tests := []struct {
		name     string
		info     Info
		registry string
		want     AgentImage
		wantErr  string
	}{
		{
			name:     "a release keeps its tag and digest under the mirror's path",
			info:     released(),
			registry: "registry.example.com/mirror",
			want:     AgentImage{Ref: "registry.example.com/mirror/trafficlab-agent:v0.3.0@" + testDigest, Pinned: true, Source: SourceRegistry},
		},
		{
			name:     "a host with a port and no path, trailing slash dropped",
			info:     released(),
			registry: "127.0.0.1:5000/",
			want:     AgentImage{Ref: "127.0.0.1:5000/trafficlab-agent:v0.3.0@" + testDigest, Pinned: true, Source: SourceRegistry},
		},
		{
			name:     "an unpinned build keeps its tag and stays unpinned",
			info:     resolve("v0.0.0-dev", "", nil),
			registry: "localhost/a/b",
			want:     AgentImage{Ref: "localhost/a/b/trafficlab-agent:v0.0.0-dev", Source: SourceRegistry},
		},
		{
			name:     "a registry without a host would mean Docker Hub and is refused",
			info:     released(),
			registry: "mirror",
			wantErr:  `--agent-registry "mirror" must be REGISTRY[/PATH], a registry host (a name with a dot or a port, or localhost) and an optional path, such as "registry.example.com/mirror": repository name must be canonical`,
		},
		{
			name:     "a tag in the registry is refused",
			info:     released(),
			registry: "registry.example.com/mirror:v1",
			wantErr:  `--agent-registry "registry.example.com/mirror:v1" must be REGISTRY[/PATH], a registry host (a name with a dot or a port, or localhost) and an optional path, such as "registry.example.com/mirror": invalid reference format`,
		},
		{
			name:     "a URL is refused",
			info:     released(),
			registry: "https://registry.example.com",
			wantErr:  `--agent-registry "https://registry.example.com" must be REGISTRY[/PATH], a registry host (a name with a dot or a port, or localhost) and an optional path, such as "registry.example.com/mirror": invalid reference format`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.info.Rehosted(tt.registry)
			if errText(err) != tt.wantErr {
				t.Fatalf("Rehosted(%q) error %q, want %q", tt.registry, errText(err), tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Rehosted(%q) (-want +got):\n%s", tt.registry, diff)
			}
		})
	}
}

func TestDefaultAgentImageAndParse(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == AgentImageEnv {
				return v
			}
			return ""
		}
	}
	tests := []struct {
		name    string
		getenv  func(string) string
		want    AgentImage
		wantErr string
	}{
		{
			name:   "without the variable, the built-in image",
			getenv: env(""),
			want:   AgentImage{Ref: released().AgentImage, Pinned: true, Source: SourceBuiltIn},
		},
		{
			name:   "the variable's image, pinned when it names a digest",
			getenv: env("registry.example.com/mirror/trafficlab-agent:v0.3.0@" + testDigest),
			want:   AgentImage{Ref: "registry.example.com/mirror/trafficlab-agent:v0.3.0@" + testDigest, Pinned: true, Source: SourceEnv},
		},
		{
			name:   "the variable's image by tag is not pinned",
			getenv: env(" registry.example.com/trafficlab-agent:dev "),
			want:   AgentImage{Ref: "registry.example.com/trafficlab-agent:dev", Source: SourceEnv},
		},
		{
			name:    "a reference the node would refuse is refused, naming the variable",
			getenv:  env("Registry.example.com/Trafficlab-Agent:v1"),
			wantErr: `$TRAFFICLAB_AGENT_IMAGE "Registry.example.com/Trafficlab-Agent:v1" is not a valid image reference: invalid reference format: repository name (Trafficlab-Agent) must be lowercase`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := released().DefaultAgentImage(tt.getenv).Parse()
			if errText(err) != tt.wantErr {
				t.Fatalf("error %q, want %q", errText(err), tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// Whatever registry is given, Rehosted refuses it or names an image the kubelet accepts, called
// trafficlab-agent, with the release's tag and digest.
func FuzzRehosted(f *testing.F) {
	for _, s := range []string{"registry.example.com/mirror", "127.0.0.1:5000", "localhost/", "mirror", "a.b/c:d", "a.b/c@sha256:00", "[::1]:5000/x", ""} {
		f.Add(s)
	}
	info := released()
	f.Fuzz(func(t *testing.T, registry string) {
		got, err := info.Rehosted(registry)
		if err != nil {
			return
		}
		ref, err := reference.ParseNormalizedNamed(got.Ref)
		if err != nil {
			t.Fatalf("Rehosted(%q) = %q, which does not parse: %v", registry, got.Ref, err)
		}
		tagged, ok := ref.(reference.NamedTagged)
		digested, ok2 := ref.(reference.Digested)
		if !ok || !ok2 || tagged.Tag() != "v0.3.0" || digested.Digest().String() != testDigest {
			t.Fatalf("Rehosted(%q) = %q: tag or digest lost", registry, got.Ref)
		}
		if !strings.HasSuffix(reference.Path(ref), "trafficlab-agent") || !strings.HasPrefix(got.Ref, strings.TrimSuffix(registry, "/")+"/") {
			t.Fatalf("Rehosted(%q) = %q: not the image under the registry", registry, got.Ref)
		}
	})
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
