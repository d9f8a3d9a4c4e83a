package version

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
)

// AgentImageEnv names the environment variable that, when set, replaces the agent image built into the
// plugin as the default of --agent-image: a mirror's copy of it, set once for a shell or a CI job.
const AgentImageEnv = "TRAFFICLAB_AGENT_IMAGE"

// Where an agent image came from, for the lines that report it and the errors that refuse it.
const (
	SourceBuiltIn  = "built in"
	SourceEnv      = "$" + AgentImageEnv
	SourceFlag     = "--agent-image"
	SourceRegistry = "--agent-registry"
)

// AgentImage is the agent image a session adds to a pod.
type AgentImage struct {
	Ref string `json:"agentImage"`
	// Pinned says Ref names a digest, so the runtime runs exactly that image whatever happens to its
	// tag; for the built-in image, that a release pinned it.
	Pinned bool   `json:"agentImagePinned"`
	Source string `json:"agentImageSource"`
}

// DefaultAgentImage is the image a session adds when no flag names one: $TRAFFICLAB_AGENT_IMAGE when
// getenv has it, else the built-in one. It is not checked here: Parse does that, before anything
// changes in the cluster.
func (i Info) DefaultAgentImage(getenv func(string) string) AgentImage {
	if env := strings.TrimSpace(getenv(AgentImageEnv)); env != "" {
		return AgentImage{Ref: env, Source: SourceEnv}
	}
	return AgentImage{Ref: i.AgentImage, Pinned: i.AgentImagePinned, Source: SourceBuiltIn}
}

// Parse checks the reference the way the kubelet reads it (distribution/reference; containerd keeps a
// copy of it), so that a reference the node would refuse (InvalidImageName) is refused before
// the agent is added, and says whether it is pinned. The reference itself is kept as given: the
// kubelet normalizes it the same way.
func (a AgentImage) Parse() (AgentImage, error) {
	ref, err := reference.ParseNormalizedNamed(a.Ref)
	if err != nil {
		return AgentImage{}, fmt.Errorf("%s %q is not a valid image reference: %w", a.Source, a.Ref, err)
	}
	_, a.Pinned = ref.(reference.Digested)
	return a, nil
}

// Rehosted is the built-in image moved under registry (REGISTRY[/PATH]) with its name, tag and digest
// kept: what `crane copy` of the released image into that registry makes, the digest proving that
// the copy is the released image.
func (i Info) Rehosted(registry string) (AgentImage, error) {
	bad := func(err error) (AgentImage, error) {
		return AgentImage{}, fmt.Errorf("%s %q must be REGISTRY[/PATH], a registry host (a name with a dot or a port, or localhost) and an optional path, such as %q: %w",
			SourceRegistry, registry, "registry.example.com/mirror", err)
	}
	builtIn, err := reference.ParseNormalizedNamed(i.AgentImage)
	if err != nil {
		return AgentImage{}, fmt.Errorf("the built-in agent image %q: %w", i.AgentImage, err)
	}
	path := reference.Path(builtIn)
	name := path[strings.LastIndex(path, "/")+1:]
	// ParseNamed accepts only the canonical form, so a registry without a host ("mirror", which
	// would mean docker.io/mirror) is refused instead of quietly naming Docker Hub.
	ref, err := reference.ParseNamed(strings.TrimSuffix(registry, "/") + "/" + name)
	if err != nil {
		return bad(err)
	}
	if t, ok := builtIn.(reference.Tagged); ok {
		if ref, err = reference.WithTag(ref, t.Tag()); err != nil {
			return bad(err)
		}
	}
	if d, ok := builtIn.(reference.Digested); ok {
		if ref, err = reference.WithDigest(ref, d.Digest()); err != nil {
			return bad(err)
		}
	}
	return AgentImage{Ref: ref.String(), Pinned: i.AgentImagePinned, Source: SourceRegistry}, nil
}
