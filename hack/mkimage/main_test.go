package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func writeFile(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// rootfs makes a small tree with a file named after the arch, so layers differ per platform.
func rootfs(t *testing.T, arch string) string {
	t.Helper()
	d := t.TempDir()
	writeFile(t, filepath.Join(d, "bin", "agent"), "agent-for-"+arch, 0o755)
	writeFile(t, filepath.Join(d, "etc", "arch"), arch+"\n", 0o644)
	if err := os.Symlink("agent", filepath.Join(d, "bin", "alias")); err != nil {
		t.Fatal(err)
	}
	return d
}

// extract unpacks a tar archive into a fresh directory.
func extract(t *testing.T, archive string) string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, h.Name)
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, p, string(data), 0o644)
	}
}

// layerFiles returns regular-file contents and symlink targets of an image's single layer.
func layerFiles(t *testing.T, img v1.Image) map[string]string {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("got %d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.ModTime.Unix() != 0 || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d, want fixed epoch and root", h.Name, h.ModTime, h.Uid, h.Gid)
		}
		switch h.Typeflag {
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = string(b)
		case tar.TypeSymlink:
			files[h.Name] = "-> " + h.Linkname
		}
	}
}

func TestMultiPlatformOCIArchive(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "")
	amd, arm := rootfs(t, "amd64"), rootfs(t, "arm64")
	out := filepath.Join(t.TempDir(), "agent.tar")
	const ref = "trafficlab.local/agent:test"
	args := []string{
		"-platform", "linux/arm64=" + arm, "-platform", "linux/amd64=" + amd,
		"-tag", ref, "-entrypoint", "/bin/agent,--serve", "-user", "65532", "-out", out,
	}
	o, err := parseArgs(args)
	if err != nil {
		t.Fatal(err)
	}
	if err := build(o); err != nil {
		t.Fatal(err)
	}

	dir := extract(t, out)
	root, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := root.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json has %d entries, want 1 (the multi-platform index)", len(im.Manifests))
	}
	top := im.Manifests[0]
	if got := top.Annotations[annotationImageName]; got != ref {
		t.Errorf("%s = %q, want %q", annotationImageName, got, ref)
	}
	if got := top.Annotations["org.opencontainers.image.ref.name"]; got != "test" {
		t.Errorf("ref.name = %q, want test", got)
	}
	idx, err := root.ImageIndex(top.Digest)
	if err != nil {
		t.Fatal(err)
	}
	inner, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(inner.Manifests) != 2 {
		t.Fatalf("image index has %d manifests, want 2", len(inner.Manifests))
	}
	for _, want := range []string{"amd64", "arm64"} {
		var desc *v1.Descriptor
		for i := range inner.Manifests {
			if p := inner.Manifests[i].Platform; p != nil && p.OS == "linux" && p.Architecture == want {
				desc = &inner.Manifests[i]
			}
		}
		if desc == nil {
			t.Fatalf("no linux/%s manifest in %+v", want, inner.Manifests)
		}
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != want || cf.OS != "linux" {
			t.Errorf("config platform %s/%s, want linux/%s", cf.OS, cf.Architecture, want)
		}
		if got := cf.Config.Entrypoint; len(got) != 2 || got[0] != "/bin/agent" || got[1] != "--serve" {
			t.Errorf("entrypoint %q", got)
		}
		if cf.Config.User != "65532" {
			t.Errorf("user %q, want 65532", cf.Config.User)
		}
		files := layerFiles(t, img)
		if files["bin/agent"] != "agent-for-"+want || files["etc/arch"] != want+"\n" || files["bin/alias"] != "-> agent" {
			t.Errorf("linux/%s layer files: %q", want, files)
		}
	}

	// Same inputs in another flag order must give byte-identical output.
	out2 := filepath.Join(t.TempDir(), "agent2.tar")
	o2, err := parseArgs([]string{
		"-platform", "linux/amd64=" + amd, "-platform", "linux/arm64=" + arm,
		"-tag", ref, "-entrypoint", "/bin/agent,--serve", "-user", "65532", "-out", out2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := build(o2); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(out2)
	if !bytes.Equal(a, b) {
		t.Error("rebuild from the same inputs is not byte-identical")
	}
}

func TestSinglePlatformDockerArchive(t *testing.T) {
	out := filepath.Join(t.TempDir(), "peers.tar")
	o, err := parseArgs([]string{"-rootfs", rootfs(t, "amd64"), "-tag", "trafficlab.local/peers:x", "-entrypoint", "/bin/agent", "-out", out})
	if err != nil {
		t.Fatal(err)
	}
	if err := build(o); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag("trafficlab.local/peers:x")
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Architecture != "amd64" || cf.Config.Entrypoint[0] != "/bin/agent" {
		t.Errorf("config %+v", cf.Config)
	}
	if files := layerFiles(t, img); files["bin/agent"] != "agent-for-amd64" {
		t.Errorf("files %q", files)
	}
}

func TestParseArgsErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-tag", "a/b:c", "-out", "x"},
		{"-platform", "linux/amd64", "-tag", "a/b:c", "-out", "x"},
		{"-platform", "linux/amd64=/d", "-out", "x"},
		{"-platform", "linux/amd64=/d", "-platform", "linux/arm64=/e", "-tag", "a/b:c", "-format", "docker", "-out", "x"},
	} {
		if _, err := parseArgs(args); err == nil {
			t.Errorf("parseArgs(%q) succeeded, want error", args)
		}
	}
}

// TestPushIndexDigest: the release links the digest mkimage writes into the plugin, so the index a
// registry serves under the tag must have exactly that digest, and the archive built in the same run
// the same one (the verify snapshot is checked through the archive).
func TestPushIndexDigest(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "")
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	tmp := t.TempDir()
	out, digestFile := filepath.Join(tmp, "agent.tar"), filepath.Join(tmp, "digest")
	ref := host + "/trafficlab/agent:v1.2.3"
	o, err := parseArgs([]string{
		"-platform", "linux/amd64=" + rootfs(t, "amd64"), "-platform", "linux/arm64=" + rootfs(t, "arm64"),
		"-tag", ref, "-entrypoint", "/bin/agent", "-out", out, "-push", "-digest-file", digestFile,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := build(o); err != nil {
		t.Fatal(err)
	}
	written, err := os.ReadFile(digestFile)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	pushed, err := remote.Index(tag)
	if err != nil {
		t.Fatalf("the registry has no index under %s: %v", ref, err)
	}
	pushedDigest, err := pushed.Digest()
	if err != nil {
		t.Fatal(err)
	}
	root, err := layout.ImageIndexFromPath(extract(t, out))
	if err != nil {
		t.Fatal(err)
	}
	im, err := root.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{pushedDigest.String(), pushedDigest.String()}
	if diff := cmp.Diff(want, []string{strings.TrimSpace(string(written)), im.Manifests[0].Digest.String()}); diff != "" {
		t.Errorf("digest file and archive index vs the pushed index (-want +got):\n%s", diff)
	}
	// By digest, the registry serves the two platforms.
	byDigest, err := remote.Index(tag.Digest(pushedDigest.String()))
	if err != nil {
		t.Fatal(err)
	}
	m, err := byDigest.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 2 {
		t.Errorf("pushed index has %d manifests, want 2", len(m.Manifests))
	}
}
