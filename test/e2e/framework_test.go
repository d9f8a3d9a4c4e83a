//go:build e2e

// Package e2e runs end-to-end tests against the trafficlab cluster made by
// hack/cluster/up.sh (KUBECONFIG and PATH from hack/cluster/env.sh; hack/e2e.sh does it all).
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

var (
	clientOnce sync.Once
	clientSet  *kubernetes.Clientset
	restConfig *rest.Config
	clientErr  error
)

// client returns a clientset for $KUBECONFIG (the cluster's admin kubeconfig).
func client(t *testing.T) *kubernetes.Clientset {
	t.Helper()
	clientOnce.Do(func() {
		path := os.Getenv("KUBECONFIG")
		if path == "" {
			clientErr = fmt.Errorf("KUBECONFIG is not set: source hack/cluster/env.sh or use hack/e2e.sh")
			return
		}
		restConfig, clientErr = clientcmd.BuildConfigFromFlags("", path)
		if clientErr != nil {
			clientErr = fmt.Errorf("load kubeconfig %s: %w", path, clientErr)
			return
		}
		clientSet, clientErr = kubernetes.NewForConfig(restConfig)
	})
	if clientErr != nil {
		t.Fatal(clientErr)
	}
	return clientSet
}

// peersImage is the test-peer image built by hack/cluster/build.sh and imported by up.sh.
// $TRAFFICLAB_PEERS_IMAGE wins; otherwise it is read from $TRAFFICLAB_CACHE/images/refs.env.
func peersImage(t *testing.T) string {
	t.Helper()
	if v := os.Getenv("TRAFFICLAB_PEERS_IMAGE"); v != "" {
		return v
	}
	cache := os.Getenv("TRAFFICLAB_CACHE")
	if cache == "" {
		cache = "/var/cache/trafficlab"
	}
	refs := filepath.Join(cache, "images", "refs.env")
	f, err := os.Open(refs)
	if err != nil {
		t.Fatalf("peers image: set TRAFFICLAB_PEERS_IMAGE or run hack/cluster/build.sh: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "TRAFFICLAB_PEERS_IMAGE="); ok {
			return v
		}
	}
	t.Fatalf("no TRAFFICLAB_PEERS_IMAGE in %s", refs)
	return ""
}

func randSuffix() string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// testContext is cancelled when the test ends or after the given budget.
func testContext(t *testing.T, budget time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	t.Cleanup(cancel)
	return ctx
}

// newNamespace creates a namespace for one test and deletes it (waiting until it is gone)
// when the test ends; on failure it first logs what was in it.
func newNamespace(t *testing.T, prefix string) string {
	t.Helper()
	return createNamespace(t, metav1.ObjectMeta{GenerateName: "tl-e2e-" + prefix + "-"})
}

// createNamespace creates the namespace meta names (Name or GenerateName), labelled as the e2e's,
// and deletes it as newNamespace does.
func createNamespace(t *testing.T, meta metav1.ObjectMeta) string {
	t.Helper()
	cs := client(t)
	meta.Labels = map[string]string{"trafficlab.dev/e2e": "true"}
	ns, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: meta}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	name := ns.Name
	t.Logf("namespace %s", name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if t.Failed() {
			dumpNamespace(ctx, t, name)
		}
		err := cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationForeground)})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete namespace %s: %v", name, err)
			return
		}
		err = wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			_, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			t.Errorf("namespace %s still present after delete: %v", name, err)
		}
	})
	return name
}

func dumpNamespace(ctx context.Context, t *testing.T, ns string) {
	cs := client(t)
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, p := range pods.Items {
			st, _ := json.Marshal(p.Status)
			t.Logf("pod %s: %s", p.Name, st)
		}
	}
	evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, e := range evs.Items {
			t.Logf("event %s %s/%s: %s: %s", e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
		}
	}
}

// eventually polls cond until it returns true, failing the test with the last
// observation when the deadline passes.
func eventually(ctx context.Context, t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) (bool, string)) {
	t.Helper()
	var last string
	start := time.Now()
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		ok, obs := cond(ctx)
		last = obs
		return ok, nil
	})
	if err != nil {
		t.Fatalf("timed out after %s waiting for %s; last: %s", time.Since(start).Round(time.Millisecond), what, last)
	}
	t.Logf("%s (%s)", what, time.Since(start).Round(time.Millisecond))
}

// peerPod is a pod spec running the peers image; cmd nil keeps the image entrypoint (peer-echo).
func peerPod(t *testing.T, name string, labels map[string]string, cmd ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       peerPodSpec(t, cmd...),
	}
}

func peerPodSpec(t *testing.T, cmd ...string) corev1.PodSpec {
	return corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr.To[int64](1),
		Containers: []corev1.Container{{
			Name:            "main",
			Image:           peersImage(t),
			ImagePullPolicy: corev1.PullIfNotPresent,
			Command:         cmd,
			Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
				FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"},
			}}},
		}},
	}
}

// createPodReady creates a pod and waits until it is Ready.
func createPodReady(ctx context.Context, t *testing.T, ns string, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	cs := client(t)
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", pod.Name, err)
	}
	var got *corev1.Pod
	eventually(ctx, t, 2*time.Minute, "pod "+pod.Name+" Ready", func(ctx context.Context) (bool, string) {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		got = p
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, ""
			}
		}
		return false, fmt.Sprintf("phase %s, containers %+v", p.Status.Phase, p.Status.ContainerStatuses)
	})
	return got
}

// kubectl runs the kubectl on PATH (hack/cluster/env.sh puts the cluster's own first).
func kubectl(ctx context.Context, t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "kubectl", args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err = cmd.Run()
	t.Logf("kubectl %s -> err=%v stdout=%q stderr=%q", strings.Join(args, " "), err, trunc(o.String()), trunc(e.String()))
	if slices.Contains(args[:min(len(args), 2)], "trafficlab") {
		checkPluginOutput(t, "kubectl "+strings.Join(args, " "), args, e.String())
	}
	return o.String(), e.String(), err
}

// klogLine is klog's header (severity, date, time, thread, file:line), which only libraries' lines carry.
var klogLine = regexp.MustCompile(`(?m)^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ ]+:\d+\] .*$`)

// verboseFlag matches a -v flag that asks for klog's lines.
var verboseFlag = regexp.MustCompile(`^--?v(=|$)|^-v\d`)

// checkPluginOutput fails t when a plugin run (args as passed to the plugin, output what it printed)
// panicked, or, at the default verbosity, let a library's log line through: client-go's lines belong
// to -v=4 and up, not between trafficlab's own. Every way the e2e tests run the plugin ends here.
func checkPluginOutput(t *testing.T, name string, args []string, output string) {
	t.Helper()
	if strings.Contains(output, "panic:") || strings.Contains(output, "Unhandled Error") {
		t.Errorf("%s crashed or logged client-go noise:\n%s", name, output)
	}
	if slices.ContainsFunc(args, verboseFlag.MatchString) {
		return
	}
	if lines := klogLine.FindAllString(output, -1); len(lines) > 0 {
		t.Errorf("%s printed klog lines at the default verbosity:\n%s", name, strings.Join(lines, "\n"))
	}
}

func trunc(s string) string {
	if len(s) > 600 {
		return s[:600] + "..."
	}
	return s
}

// TestMain makes sure the cluster is reachable and that the kubectl on PATH is the
// cluster's own (the base image has an unrelated /usr/bin/kubectl) before anything runs.
func TestMain(m *testing.M) {
	if err := checkTools(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v (source hack/cluster/env.sh, or run hack/e2e.sh)\n", err)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

func checkTools() error {
	path := os.Getenv("KUBECONFIG")
	if path == "" {
		return fmt.Errorf("KUBECONFIG is not set")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	sv, err := cs.Discovery().ServerVersion()
	if err != nil {
		return fmt.Errorf("cluster not reachable: %w", err)
	}
	out, err := exec.Command("kubectl", "version", "--client", "-o", "json").Output()
	if err != nil {
		return fmt.Errorf("kubectl not usable: %w", err)
	}
	var v struct {
		ClientVersion struct{ GitVersion string } `json:"clientVersion"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return fmt.Errorf("kubectl version: %w", err)
	}
	if v.ClientVersion.GitVersion != sv.GitVersion {
		kp, _ := exec.LookPath("kubectl")
		return fmt.Errorf("kubectl on PATH (%s) is %s, the cluster is %s", kp, v.ClientVersion.GitVersion, sv.GitVersion)
	}
	return nil
}
