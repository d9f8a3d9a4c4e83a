// Package version tells which build of trafficlab is running and which agent image belongs to it.
package version

import (
	"regexp"
	"runtime/debug"
	"strings"
)

// version and agentDigest are set at link time (-ldflags "-X .../pkg/version.version=v1.2.3 -X
// .../pkg/version.agentDigest=sha256:..."). They are the plugin's only package variables, because the
// linker can set nothing else. agentDigest is set by a release alone (.goreleaser.yaml): the digest of
// the agent image index that the release workflow pushed before it built the plugin.
var (
	version     = ""
	agentDigest = ""
)

// AgentImageRepository is where released agent images live; the tag is always the plugin's own version,
// so a plugin never talks to an agent built from other sources.
const AgentImageRepository = "ghcr.io/trafficlab/trafficlab-agent"

// DevVersion is what a build with neither ldflags nor module information reports.
const DevVersion = "v0.0.0-dev"

// Info describes one build.
type Info struct {
	Version string `json:"version"`
	// AgentImage is what the plugin adds to pods: repository:tag@digest in a release, repository:tag
	// otherwise.
	AgentImage string `json:"agentImage"`
	// AgentImagePinned says AgentImage carries the released index digest, so the agent that runs with
	// NET_ADMIN in a pod is the one released whatever later happens to the tag. A build from source
	// (make, go install) is not pinned: nothing pushed an image for it before it was linked.
	AgentImagePinned bool   `json:"agentImagePinned"`
	GoVersion        string `json:"goVersion"`
}

// Get returns the running binary's build information.
func Get() Info {
	return resolve(version, agentDigest, readBuildInfo())
}

func readBuildInfo() *debug.BuildInfo {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	return bi
}

// resolve prefers the linker-set version; a `go install …@v1.2.3` build has no ldflags but carries the
// module version in its build info, and a plain `go build` in a checkout carries a VCS pseudo-version.
// A digest is used only when it has the form of a sha256 digest; anything else leaves the image unpinned
// rather than naming a reference no registry can resolve (the release workflow checks the form before
// it links, so this is a guard, not a path a release takes).
func resolve(linked, digest string, bi *debug.BuildInfo) Info {
	v := linked
	goVersion := ""
	if bi != nil {
		goVersion = bi.GoVersion
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	if v == "" {
		v = DevVersion
	}
	info := Info{Version: v, AgentImage: AgentImageRepository + ":" + imageTag(v), GoVersion: goVersion}
	if digestPattern.MatchString(digest) {
		info.AgentImage += "@" + digest
		info.AgentImagePinned = true
	}
	return info
}

// digestPattern is the one digest algorithm registries and containerd accept for an image index.
var digestPattern = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

var invalidTagChars = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// imageTag turns a Go module version into a valid OCI tag: build metadata such as "+dirty" or
// "+incompatible" is legal in semver but not in a tag, and a tag is at most 128 characters.
func imageTag(v string) string {
	t := invalidTagChars.ReplaceAllString(v, "-")
	t = strings.TrimLeft(t, ".-")
	if len(t) > 128 {
		t = t[:128]
	}
	if t == "" {
		return "latest"
	}
	return t
}
