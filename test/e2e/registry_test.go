//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// registryEnv reads what hack/cluster/up.sh wrote about the local registries
// ($TRAFFICLAB_CLUSTER_DIR/registry/registry.env): addresses, the auth registry's credentials and
// the refs of the images pushed into it.
func registryEnv(t *testing.T) map[string]string {
	t.Helper()
	path := filepath.Join(clusterDir(), "registry", "registry.env")
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("registry env (written by hack/cluster/up.sh): %v", err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && !strings.HasPrefix(k, "#") {
			env[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	for _, k := range []string{"TRAFFICLAB_REGISTRY", "TRAFFICLAB_AUTH_REGISTRY", "TRAFFICLAB_AUTH_REGISTRY_USER",
		"TRAFFICLAB_AUTH_REGISTRY_PASSWORD", "TRAFFICLAB_AUTH_PEERS_IMAGE", "TRAFFICLAB_AUTH_AGENT_IMAGE"} {
		if env[k] == "" {
			t.Fatalf("%s has no %s (the agent's is there once make agent-image has built _output/images/agent.tar)", path, k)
		}
	}
	return env
}

func clusterDir() string {
	if d := os.Getenv("TRAFFICLAB_CLUSTER_DIR"); d != "" {
		return d
	}
	return "/var/lib/trafficlab-cluster"
}

// pullEvents returns the messages of the pod's Pulled and Failed events (what the kubelet says about
// its image pulls).
func pullEvents(ctx context.Context, t *testing.T, ns, pod string) []string {
	t.Helper()
	evs, err := client(t).CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
	if err != nil {
		t.Fatalf("events of %s: %v", pod, err)
	}
	var msgs []string
	for _, e := range evs.Items {
		if e.Reason == "Pulled" || e.Reason == "Failed" {
			msgs = append(msgs, e.Reason+": "+e.Message)
		}
	}
	return msgs
}

// waitPulled waits for the kubelet's "Successfully pulled image REF" event of the pod.
func waitPulled(ctx context.Context, t *testing.T, ns, pod, ref string) {
	t.Helper()
	want := fmt.Sprintf("Pulled: Successfully pulled image %q", ref)
	eventually(ctx, t, time.Minute, "the kubelet pulled "+ref+" for "+pod, func(ctx context.Context) (bool, string) {
		msgs := pullEvents(ctx, t, ns, pod)
		for _, m := range msgs {
			if strings.HasPrefix(m, want) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%q", msgs)
	})
}

// unauthorized is how containerd reports a registry that wants credentials it was not given.
var unauthorized = regexp.MustCompile(`(?i)401 unauthorized|no basic auth credentials|authorization failed`)

// TestRegistryPrivatePull: a pod whose image is in the registry with basic auth runs only with its
// imagePullSecret, and a session in it whose --agent-image names that registry gets its agent pulled
// with the pod's own secret (ephemeral containers use the pod's imagePullSecrets).
func TestRegistryPrivatePull(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 5*time.Minute)
	env := registryEnv(t)
	ns := newNamespace(t, "registry-auth")
	cs := client(t)

	// Without credentials the registry refuses the pull: the auth is real.
	anon := peerPod(t, "anonymous", nil)
	anon.Spec.Containers[0].Image = env["TRAFFICLAB_AUTH_PEERS_IMAGE"]
	anon.Spec.Containers[0].ImagePullPolicy = corev1.PullAlways
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, anon, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, time.Minute, "the pod without a pull secret fails to pull", func(ctx context.Context) (bool, string) {
		for _, m := range pullEvents(ctx, t, ns, "anonymous") {
			if strings.HasPrefix(m, "Failed: ") && unauthorized.MatchString(m) {
				t.Logf("kubelet: %s", m)
				return true, ""
			}
		}
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "anonymous", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return false, fmt.Sprintf("%+v", p.Status.ContainerStatuses)
	})

	auth := base64.StdEncoding.EncodeToString([]byte(env["TRAFFICLAB_AUTH_REGISTRY_USER"] + ":" + env["TRAFFICLAB_AUTH_REGISTRY_PASSWORD"]))
	cfg, err := json.Marshal(map[string]any{"auths": map[string]any{env["TRAFFICLAB_AUTH_REGISTRY"]: map[string]string{
		"username": env["TRAFFICLAB_AUTH_REGISTRY_USER"], "password": env["TRAFFICLAB_AUTH_REGISTRY_PASSWORD"], "auth": auth,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "regcred"},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: cfg},
	}
	if _, err := cs.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Always: the kubelet pulls (and authenticates) for this pod even when an earlier run left the
	// image on the node.
	target := pfEchoPod(t, "target", nil, false)
	target.Spec.Containers[0].Image = env["TRAFFICLAB_AUTH_PEERS_IMAGE"]
	target.Spec.Containers[0].ImagePullPolicy = corev1.PullAlways
	target.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
	createPodReady(ctx, t, ns, target)
	waitPulled(ctx, t, ns, "target", env["TRAFFICLAB_AUTH_PEERS_IMAGE"])

	agent := env["TRAFFICLAB_AUTH_AGENT_IMAGE"]
	pf := pfStart(t, "pf", ns, "pod/target", ":8080", "--agent-image", agent, "--image-pull-policy", "Always")
	port, _ := pf.localPort("localhost:8080", 30*time.Second)
	pf.connected(2 * time.Minute)
	pfMustEcho(ctx, t, port, "target")
	waitPulled(ctx, t, ns, "target", agent)
	names, _ := pfPodEphemeral(ctx, t, ns, "target")
	if len(names) != 1 {
		t.Errorf("ephemeral containers %q, want the one agent", names)
	}
}

// TestRegistryDefaultAgentPulled: the plugin's default agent image (ghcr.io/...) and the peers image
// (trafficlab.local/...) reach the node by a pull through containerd's hosts.toml from the local
// registry: the kubelet reports the agent as pulled (or already present from an earlier pull), and the
// registry served their manifests to containerd (which adds the upstream host as ?ns=).
func TestRegistryDefaultAgentPulled(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	out, _, err := kubectl(ctx, t, "", "trafficlab", "version", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		AgentImage string `json:"agentImage"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("version -o json: %v: %q", err, out)
	}
	ns, pf, _ := pfTargetSession(ctx, t, "registry-default")
	if err := pf.stop(); err != nil {
		t.Logf("port-forward exit: %v", err)
	}

	var pulled string
	for _, m := range pullEvents(ctx, t, ns, "target") {
		if strings.Contains(m, fmt.Sprintf("image %q", v.AgentImage)) {
			pulled = m
		}
	}
	if pulled == "" {
		t.Errorf("no Pulled event for the agent image %s in %q", v.AgentImage, pullEvents(ctx, t, ns, "target"))
	} else {
		t.Logf("kubelet: %s", pulled)
	}
	// The agent that runs is the one the registry holds under its tag now, not an older build of the
	// same tag left in containerd (up.sh removes those when it pushes a new digest).
	pod, err := client(t).CoreV1().Pods(ns).Get(ctx, "target", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := registryDigest(ctx, t, registryEnv(t)["TRAFFICLAB_REGISTRY"], v.AgentImage)
	for _, st := range pod.Status.EphemeralContainerStatuses {
		if _, got, _ := strings.Cut(st.ImageID, "@"); got != want {
			t.Errorf("agent %s runs %s, the registry has %s under that tag: a stale image on the node", st.Name, st.ImageID, want)
		}
	}
	if len(pod.Status.EphemeralContainerStatuses) == 0 {
		t.Errorf("no agent in pod target")
	}

	logPath := filepath.Join(clusterDir(), "logs", "registry.log")
	log, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{v.AgentImage, peersImage(t)} {
		host, rest, _ := strings.Cut(ref, "/")
		repo, tag, _ := strings.Cut(rest, ":")
		tag, _, _ = strings.Cut(tag, "@")
		uri := regexp.QuoteMeta(fmt.Sprintf("/v2/%s/manifests/%s?ns=%s", repo, tag, host))
		served := regexp.MustCompile(`(?m)^.*"(HEAD|GET) ` + uri + ` HTTP/[0-9.]+" 200 .*$`)
		if line := served.Find(log); line == nil {
			t.Errorf("%s has no 200 for %s: containerd did not resolve %s through the local registry", logPath, uri, ref)
		} else {
			t.Logf("registry served %s: %s", ref, line)
		}
	}
}

// registryDigest asks the local registry at addr (TLS, the cluster CA) for the digest of ref's tag,
// as containerd resolves it (hosts.toml maps ref's host to addr).
func registryDigest(ctx context.Context, t *testing.T, addr, ref string) string {
	t.Helper()
	ca, err := os.ReadFile(filepath.Join(clusterDir(), "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatal("no certificate in the cluster CA file")
	}
	_, rest, _ := strings.Cut(ref, "/")
	repo, tag, _ := strings.Cut(rest, ":")
	tag, _, _ = strings.Cut(tag, "@")
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, fmt.Sprintf("https://%s/v2/%s/manifests/%s", addr, repo, tag), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", strings.Join([]string{"application/vnd.oci.image.index.v1+json",
		"application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.manifest.v1+json",
		"application/vnd.docker.distribution.manifest.v2+json"}, ", "))
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("registry %s: %v", addr, err)
	}
	resp.Body.Close()
	d := resp.Header.Get("Docker-Content-Digest")
	if resp.StatusCode != http.StatusOK || d == "" {
		t.Fatalf("HEAD %s: %s, digest %q", req.URL, resp.Status, d)
	}
	return d
}
