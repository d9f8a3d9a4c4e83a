//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/trafficlab/kubectl-trafficlab/pkg/version"
)

// releaseURL is where .krew.yaml's archives live once a release is published.
const releaseURL = "https://github.com/trafficlab/kubectl-trafficlab/releases/download/"

// krewManifest is the part of dist/trafficlab.yaml (krew's Plugin) this test reads.
type krewManifest struct {
	Spec struct {
		Version   string `json:"version"`
		Caveats   string `json:"caveats"`
		Platforms []struct {
			URI    string `json:"uri"`
			SHA256 string `json:"sha256"`
		} `json:"platforms"`
	} `json:"spec"`
}

// TestKrewInstall: the snapshot release of this tree (make dist: the archives and the rendered krew
// manifest, the plugin pinned to the agent index digest) installed by the real krew from a file server,
// as a user installs it from GitHub, is the plugin kubectl finds; it names its agent by digest; the
// completion caveat krew prints, run as printed, makes <TAB> complete verbs and the cluster's pods
// through kubectl's bash completion; and a steal with it runs the pinned agent in a pod.
func TestKrewInstall(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 8*time.Minute)
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dist := filepath.Join(root, "dist")
	manifestText, err := os.ReadFile(filepath.Join(dist, "trafficlab.yaml"))
	if err != nil {
		t.Fatalf("the snapshot release: %v; make e2e makes it (make dist) when the krew test is selected", err)
	}
	var m krewManifest
	if err := yaml.Unmarshal(manifestText, &m); err != nil {
		t.Fatalf("dist/trafficlab.yaml: %v", err)
	}
	v := m.Spec.Version
	// The release must be of this tree, and its agent the image the cluster was given: make built the
	// plugin on PATH, the agent image and dist/ from one VERSION.
	treeVersion := pluginVersion(t, exec.Command("kubectl-trafficlab", "version", "-o", "json")).Version
	if v != treeVersion {
		t.Fatalf("dist/ is the snapshot of %s, this tree is %s: run make dist (make e2e does when the krew test is selected)", v, treeVersion)
	}
	digest, err := os.ReadFile(filepath.Join(root, "_output", "images", "agent.digest"))
	if err != nil {
		t.Fatalf("the agent image's digest (make agent-image): %v", err)
	}
	wantImage := version.AgentImageRepository + ":" + v + "@" + strings.TrimSpace(string(digest))

	// The release's archives on a file server on loopback, the manifest's uris pointed at it (the
	// sha256 stay as released), as the release on GitHub would serve them.
	var mu sync.Mutex
	var fetched []string
	files := http.FileServer(http.Dir(dist))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		fetched = append(fetched, r.URL.Path)
		mu.Unlock()
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	localManifest := strings.ReplaceAll(string(manifestText), releaseURL+v+"/", srv.URL+"/")
	if n := strings.Count(localManifest, "uri: "+srv.URL+"/"); n != len(m.Spec.Platforms) || n == 0 {
		t.Fatalf("%d of %d uris in dist/trafficlab.yaml are under %s%s/", n, len(m.Spec.Platforms), releaseURL, v)
	}
	tmp := t.TempDir()
	manifestFile := filepath.Join(tmp, "trafficlab.yaml") // krew takes the plugin's name from the file's
	if err := os.WriteFile(manifestFile, []byte(localManifest), 0o644); err != nil {
		t.Fatal(err)
	}

	// The real krew as `kubectl krew`, in a KREW_ROOT of its own; PATH has krew's bin, kubectl and the
	// system's tools, and not make's build of the plugin.
	out, err := exec.CommandContext(ctx, filepath.Join(root, "hack", "tools", "install.sh"), "kubectl-krew").Output()
	if err != nil {
		t.Fatalf("hack/tools/install.sh kubectl-krew: %v", err)
	}
	tools := filepath.Join(tmp, "tools")
	if err := os.Mkdir(tools, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(strings.TrimSpace(string(out)), filepath.Join(tools, "kubectl-krew")); err != nil {
		t.Fatal(err)
	}
	kubectlPath, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	krewRoot, home := filepath.Join(tmp, "krew"), filepath.Join(tmp, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"PATH=" + strings.Join([]string{filepath.Join(krewRoot, "bin"), tools, filepath.Dir(kubectlPath), "/usr/bin", "/bin"}, ":"),
		"HOME=" + home, "KREW_ROOT=" + krewRoot, "KREW_NO_UPGRADE_CHECK=1", "KUBECONFIG=" + os.Getenv("KUBECONFIG"),
	}
	install, err := krewRun(ctx, t, env, "kubectl", "krew", "install", "--manifest="+manifestFile)
	if err != nil {
		t.Fatalf("kubectl krew install --manifest: %v\n%s", err, install)
	}
	archive := fmt.Sprintf("/kubectl-trafficlab_%s_%s_%s.tar.gz", v, runtime.GOOS, runtime.GOARCH)
	mu.Lock()
	got := slices.Clone(fetched)
	mu.Unlock()
	if !slices.Contains(got, archive) {
		t.Errorf("krew fetched %q from the file server, want %s", got, archive)
	}

	// kubectl finds the plugin krew linked, and it names its agent by the digest of this tree's image.
	plugins, err := krewRun(ctx, t, env, "kubectl", "plugin", "list")
	if want := filepath.Join(krewRoot, "bin", "kubectl-trafficlab"); err != nil || !strings.Contains(plugins, want) {
		t.Fatalf("kubectl plugin list: %v; want %s in:\n%s", err, want, plugins)
	}
	cmd := exec.CommandContext(ctx, "kubectl", "trafficlab", "version", "-o", "json")
	cmd.Env = env
	info := pluginVersion(t, cmd)
	if info.Version != v || info.AgentImage != wantImage || !info.AgentImagePinned {
		t.Errorf("the krew-installed plugin says version %s, agent image %s (pinned: %t); want %s, %s (pinned)", info.Version, info.AgentImage, info.AgentImagePinned, v, wantImage)
	}

	// Completion: kubectl runs kubectl_complete-trafficlab from PATH, which krew does not link; the
	// caveat's line, run as krew printed it, does.
	if comps := bashComplete(ctx, t, env, "kubectl", "trafficlab", "st"); slices.Contains(comps, "steal") {
		t.Errorf("`kubectl trafficlab st<TAB>` completed %q before the caveat's link; the test would not see the link's effect", comps)
	}
	link := caveatLink(t, install)
	if out, err := krewRun(ctx, t, env, "bash", "-c", link); err != nil {
		t.Fatalf("the caveat's line %q: %v\n%s", link, err, out)
	}
	if comps := bashComplete(ctx, t, env, "kubectl", "trafficlab", "st"); !slices.Contains(comps, "steal") {
		t.Errorf("`kubectl trafficlab st<TAB>` completed %q, want steal", comps)
	}

	// A steal with the krew-installed plugin: the pinned agent runs in the pod, the Service's requests
	// reach the local server, and after Ctrl-C the pod answers again.
	st := newStealTarget(ctx, t, "krew")
	if comps := bashComplete(ctx, t, env, "kubectl", "trafficlab", "steal", "-n", st.ns, ""); !slices.Contains(comps, "target") {
		t.Errorf("`kubectl trafficlab steal -n %s <TAB>` completed %q, want the pod target", st.ns, comps)
	}
	p := pluginStartWith(t, func(c *exec.Cmd) { c.Env = env }, "krew-steal", "steal", st.ns, "pod/target", "--port", fmt.Sprintf("8080:%d", st.local.Port))
	p.waitLine(0, "stderr", stealingRE, 3*time.Minute)
	curl, err := exec.CommandContext(ctx, "curl", "-sS", "--max-time", "10", st.svcURL("/krew")).CombinedOutput()
	if err != nil || !strings.Contains(string(curl), `"pod":"laptop"`) {
		t.Errorf("curl %s while stealing: %q, %v; want the local server", st.svcURL("/krew"), curl, err)
	}
	pod, err := client(t).CoreV1().Pods(st.ns).Get(ctx, "target", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var agents []string
	for _, c := range pod.Spec.EphemeralContainers {
		if !strings.HasPrefix(c.Image, version.AgentImageRepository+":") {
			continue
		}
		imageID := ""
		for _, s := range pod.Status.EphemeralContainerStatuses {
			if s.Name == c.Name {
				imageID = s.ImageID
			}
		}
		agents = append(agents, c.Image+" (image id "+imageID+")")
		if c.Image != wantImage || !strings.HasSuffix(imageID, "@"+strings.TrimSpace(string(digest))) {
			t.Errorf("agent container %s runs %s, image id %q; want %s by its digest", c.Name, c.Image, imageID, wantImage)
		}
	}
	if len(agents) != 1 {
		t.Errorf("agent containers in the pod: %q, want one", agents)
	}
	if err := p.stop(); err != nil {
		t.Errorf("steal exited with %v after SIGINT, want 0", err)
	}
	waitAnswer(ctx, t, 30*time.Second, st.svcURL("/after"), "target")
}

// pluginVersion runs cmd (`version -o json` of some build of the plugin) and decodes what it printed.
func pluginVersion(t *testing.T, cmd *exec.Cmd) version.Info {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, stderr.String())
	}
	var info version.Info
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("%s printed %q: %v", strings.Join(cmd.Args, " "), out, err)
	}
	t.Logf("%s: %+v", strings.Join(cmd.Args, " "), info)
	return info
}

// krewRun runs a command with env as its whole environment and returns its combined output.
func krewRun(ctx context.Context, t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	t.Logf("%s %s -> err=%v output=%q", name, strings.Join(args, " "), err, trunc(string(out)))
	if slices.Contains(args[:min(len(args), 1)], "trafficlab") {
		checkPluginOutput(t, name+" "+strings.Join(args, " "), args, string(out))
	}
	return string(out), err
}

// krewBox is the frame krew draws around what it prints after an install (" | " per level).
var krewBox = regexp.MustCompile(`^(?: *\| ?)+`)

// caveatLink is the `ln -s` command in the caveats krew printed after the install (install is its
// output), with its continuation lines, as a user would copy it.
func caveatLink(t *testing.T, install string) string {
	t.Helper()
	var cmd []string
	for _, l := range strings.Split(install, "\n") {
		l = strings.TrimSpace(krewBox.ReplaceAllString(l, ""))
		if len(cmd) == 0 && !strings.HasPrefix(l, "ln -s") {
			continue
		}
		cmd = append(cmd, l)
		if !strings.HasSuffix(l, `\`) {
			return strings.Join(cmd, "\n")
		}
	}
	t.Fatalf("krew printed no `ln -s` line for kubectl_complete-trafficlab after the install:\n%s", install)
	return ""
}

// bashCompletion is what a bash with kubectl's completion loaded does on <TAB> after the words given
// as arguments: the function `complete -p kubectl` names runs with COMP_* set as readline sets them
// (COMP_TYPE 9 is TAB), and COMPREPLY is printed one per line.
const bashCompletion = `
source /usr/share/bash-completion/bash_completion || exit 3
source <(kubectl completion bash) || exit 4
f=$(complete -p kubectl) && f=${f##*-F } && f=${f%% *} || exit 5
COMP_WORDS=("$@") COMP_CWORD=$(($# - 1)) COMP_LINE="$*" COMP_TYPE=9
COMP_POINT=${#COMP_LINE}
"$f" kubectl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}" 2>/dev/null
printf '%s\n' "${COMPREPLY[@]}"
`

// bashComplete returns the completions bash offers for <TAB> after words (the last one being
// completed), each without its description.
func bashComplete(ctx context.Context, t *testing.T, env []string, words ...string) []string {
	t.Helper()
	cmd := exec.CommandContext(ctx, "bash", append([]string{"--norc", "--noprofile", "-c", bashCompletion, "bash"}, words...)...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bash completion of %q: %v (exit 3: Debian's bash-completion is missing; .ci/run installs it)\n%s", words, err, stderr.String())
	}
	var comps []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			comps = append(comps, f[0])
		}
	}
	t.Logf("<TAB> after %q: %q", words, comps)
	return comps
}
