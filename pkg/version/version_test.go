package version

import (
	"runtime/debug"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestResolve(t *testing.T) {
	bi := func(v string) *debug.BuildInfo {
		return &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/trafficlab/kubectl-trafficlab", Version: v}}
	}
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name   string
		linked string
		digest string
		bi     *debug.BuildInfo
		want   Info
	}{
		{
			name:   "a release names its agent by the index digest",
			linked: "v0.3.0",
			digest: digest,
			bi:     bi("(devel)"),
			want:   Info{Version: "v0.3.0", AgentImage: AgentImageRepository + ":v0.3.0@" + digest, AgentImagePinned: true, GoVersion: "go1.26.8"},
		},
		{
			name:   "a malformed digest leaves the image unpinned",
			linked: "v0.3.0",
			digest: "sha256:0123",
			bi:     bi("(devel)"),
			want:   Info{Version: "v0.3.0", AgentImage: AgentImageRepository + ":v0.3.0", GoVersion: "go1.26.8"},
		},
		{
			name:   "an upper-case digest is not one registries accept",
			linked: "v0.3.0",
			digest: strings.ToUpper(digest),
			bi:     bi("(devel)"),
			want:   Info{Version: "v0.3.0", AgentImage: AgentImageRepository + ":v0.3.0", GoVersion: "go1.26.8"},
		},
		{
			name:   "ldflags win over build info",
			linked: "v0.3.0",
			bi:     bi("v0.2.0"),
			want:   Info{Version: "v0.3.0", AgentImage: AgentImageRepository + ":v0.3.0", GoVersion: "go1.26.8"},
		},
		{
			name: "go install carries the module version",
			bi:   bi("v0.2.0"),
			want: Info{Version: "v0.2.0", AgentImage: AgentImageRepository + ":v0.2.0", GoVersion: "go1.26.8"},
		},
		{
			name: "build metadata is not a valid tag character",
			bi:   bi("v0.0.0-20261123013000-0123456789ab+dirty"),
			want: Info{
				Version:    "v0.0.0-20261123013000-0123456789ab+dirty",
				AgentImage: AgentImageRepository + ":v0.0.0-20261123013000-0123456789ab-dirty",
				GoVersion:  "go1.26.8",
			},
		},
		{
			name: "a devel build without ldflags",
			bi:   bi("(devel)"),
			want: Info{Version: DevVersion, AgentImage: AgentImageRepository + ":" + DevVersion, GoVersion: "go1.26.8"},
		},
		{
			name: "no build info at all",
			want: Info{Version: DevVersion, AgentImage: AgentImageRepository + ":" + DevVersion},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, resolve(tt.linked, tt.digest, tt.bi)); diff != "" {
				t.Errorf("resolve() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestImageTag(t *testing.T) {
	long := ""
	for range 200 {
		long += "a"
	}
	tests := map[string]string{
		"v1.2.3":              "v1.2.3",
		"v1.2.3+incompatible": "v1.2.3-incompatible",
		".hidden":             "hidden",
		"":                    "latest",
		long:                  long[:128],
	}
	for in, want := range tests {
		if got := imageTag(in); got != want {
			t.Errorf("imageTag(%q) = %q, want %q", in, got, want)
		}
	}
}
