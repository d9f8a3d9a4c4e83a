// Package version tells which build of trafficlab is running and which agent image belongs to it.
package version

import (
	"regexp"
	"runtime/debug"
	"strings"
)

// version is set at link time (-ldflags "-X .../pkg/version.version=v1.2.3"). It is the one package
// variable of the plugin, because the linker can set nothing else.
var version = ""

// AgentImageRepository is where released agent images live; the tag is always the plugin's own version,
// so a plugin never talks to an agent built from other sources.
const AgentImageRepository = "ghcr.io/trafficlab/trafficlab-agent"

// DevVersion is what a build with neither ldflags nor module information reports.
const DevVersion = "v0.0.0-dev"

// Info describes one build.
type Info struct {
	Version    string `json:"version"`
	AgentImage string `json:"agentImage"`
	GoVersion  string `json:"goVersion"`
}

// Get returns the running binary's build information.
func Get() Info {
	return resolve(version, readBuildInfo())
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
func resolve(linked string, bi *debug.BuildInfo) Info {
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
	return Info{Version: v, AgentImage: AgentImageRepository + ":" + imageTag(v), GoVersion: goVersion}
}

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
