//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// TestWorkloadSteal: a filtered steal of a 3-replica Deployment covers every pod: all 30 matching
// requests sent through the Service reach the local process, the 30 others are answered by the three
// pods. Scaled to 4 during the session, the new pod is joined, and matching requests that land on it
// reach the local process; after `kubectl rollout restart` the session follows the new pods.
func TestWorkloadSteal(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 10*time.Minute)
	ns := newNamespace(t, "workload")
	labels := map[string]string{"app": "echo"}
	createEchoDeployment(ctx, t, ns, labels, 3)
	clusterIP := echoService(ctx, t, ns, labels)
	pods := readyPodNames(ctx, t, ns, labels, 3)
	svcURL := func(path string) string { return "http://" + clusterIP + path }
	waitAnswer(ctx, t, time.Minute, svcURL("/"), pods[0])
	local := startLocalServer(t)

	p := pluginStart(t, "steal", "steal", ns, "deploy/echo", "--port", fmt.Sprintf("8080:%d", local.Port), "--header-filter", "^X-Dev: alice$")
	m, _, _ := p.waitLine(0, "stderr", stealingRE, 3*time.Minute)
	if !strings.HasSuffix(m[1], " on 3/3 pods of deploy/echo") {
		t.Errorf("stealing line %q does not say it covers 3/3 pods of deploy/echo", m[0])
	}
	alice := http.Header{"X-Dev": {"alice"}}

	// Every matching request reaches the laptop, whichever pod the Service picks; the others are
	// answered by the three pods.
	checkSplit := func(round string, pods []string) {
		t.Helper()
		for i := range 30 {
			r, err := getJSON(ctx, svcURL(fmt.Sprintf("/%s/alice/%d", round, i)), alice, nil)
			if err != nil || r.Pod != "laptop" {
				t.Errorf("%s: matching request %d: %+v, %v; want the local process", round, i, r, err)
			}
		}
		answered := map[string]int{}
		for i := range 30 {
			r, err := getJSON(ctx, svcURL(fmt.Sprintf("/%s/bob/%d", round, i)), http.Header{"X-Dev": {"bob"}}, nil)
			if err != nil || !slices.Contains(pods, r.Pod) {
				t.Errorf("%s: other request %d: %+v, %v; want one of the pods %q", round, i, r, err, pods)
				continue
			}
			answered[r.Pod]++
		}
		// 30 new connections through the Service leave a pod out with a chance of about 1 in 50000.
		if len(answered) != len(pods) {
			t.Errorf("%s: the other requests were answered by %v, want each of %q", round, answered, pods)
		}
	}
	checkSplit("three", pods)
	for _, pod := range pods {
		if !slices.ContainsFunc(p.snapshot(), func(l pfLine) bool {
			return l.stream == "stdout" && strings.HasPrefix(l.text, "[pod/"+pod+"] ") && strings.Contains(l.text, " GET /three/alice/")
		}) {
			t.Errorf("no stolen request line names pod %s; output:\n%s", pod, p.output())
		}
	}

	// Scale up: the new pod is joined once Ready, and a matching request to it reaches the laptop.
	from := len(p.snapshot())
	if _, _, err := kubectl(ctx, t, "", "scale", "-n", ns, "deploy/echo", "--replicas=4"); err != nil {
		t.Fatal(err)
	}
	joinedRE := regexp.MustCompile(`^\[\s*[0-9.]+s\] pod (\S+) joined (\S+) after it became Ready; (\d+)/(\d+) pods of deploy/echo$`)
	jm, _, _ := p.waitLine(from, "stderr", joinedRE, 3*time.Minute)
	newPod := jm[1]
	t.Logf("MEASURE scale-up: pod %s joined %s after it became Ready", newPod, jm[2])
	if slices.Contains(pods, newPod) {
		t.Fatalf("joined pod %s was already covered", newPod)
	}
	four := readyPodNames(ctx, t, ns, labels, 4)
	if !slices.Contains(four, newPod) {
		t.Errorf("joined pod %s is not among the ready pods %q", newPod, four)
	}
	newIP := podIP(ctx, t, ns, newPod)
	r, err := getJSON(ctx, "http://"+net.JoinHostPort(newIP, "8080")+"/new/alice", alice, nil)
	if err != nil || r.Pod != "laptop" {
		t.Errorf("matching request to the new pod %s: %+v, %v; want the local process", newPod, r, err)
	}
	r, err = getJSON(ctx, "http://"+net.JoinHostPort(newIP, "8080")+"/new/bob", nil, nil)
	if err != nil || r.Pod != newPod {
		t.Errorf("other request to the new pod %s: %+v, %v; want the pod", newPod, r, err)
	}
	checkSplit("four", four)
	p.waitLine(from, "stdout", regexp.MustCompile(`^\[pod/`+regexp.QuoteMeta(newPod)+`\] .* GET /four/alice/`), 30*time.Second)

	// A rollout replaces every pod: the session follows, and ends up covering the four new ones. Matching
	// requests keep coming meanwhile: none may be answered by a pod that is joined (after its "joined"
	// line and before its "terminating" line).
	from = len(p.snapshot())
	type answer struct {
		sent time.Duration // since the plugin started, as its lines' times are
		pod  string
	}
	var answers []answer
	var failures []string
	stopSending := make(chan struct{})
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := 0; ; i++ {
			select {
			case <-stopSending:
				return
			default:
			}
			at := time.Since(p.start)
			r, err := getJSON(ctx, svcURL(fmt.Sprintf("/rollout/alice/%d", i)), alice, nil)
			if err != nil {
				failures = append(failures, fmt.Sprintf("%s: %v", at.Round(time.Millisecond), err))
				continue
			}
			answers = append(answers, answer{sent: at, pod: r.Pod})
		}
	}()
	if _, _, err := kubectl(ctx, t, "", "rollout", "restart", "-n", ns, "deploy/echo"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := kubectl(ctx, t, "", "rollout", "status", "-n", ns, "deploy/echo", "--timeout=4m"); err != nil {
		t.Fatal(err)
	}
	restarted := readyPodNames(ctx, t, ns, labels, 4)
	for _, pod := range restarted {
		if slices.Contains(four, pod) {
			t.Fatalf("pod %s is still ready after the rollout", pod)
		}
		p.waitLine(from, "stderr", regexp.MustCompile(`^\[\s*[0-9.]+s\] pod `+regexp.QuoteMeta(pod)+` joined `), 2*time.Minute)
	}
	close(stopSending)
	<-sent
	byApp := 0
	for _, a := range answers {
		if a.pod == "laptop" {
			continue
		}
		byApp++
		joined, terminating := lineAt(p, `pod `+regexp.QuoteMeta(a.pod)+` joined `), lineAt(p, `pod `+regexp.QuoteMeta(a.pod)+` is terminating`)
		if slices.Contains(four, a.pod) {
			joined = 0 // covered before the rollout
		}
		if joined >= 0 && a.sent > joined && (terminating < 0 || a.sent < terminating) {
			t.Errorf("a matching request sent at %s was answered by pod %s, joined at %s (terminating at %s)", a.sent, a.pod, joined, terminating)
		}
	}
	// Requests that fail are not the session's doing when the pod they reach is going away: they are
	// listed to compare with its lines.
	t.Logf("during the rollout: %d matching requests, %d answered by a pod before it joined or once it was terminating, %d failed: %q",
		len(answers)+len(failures), byApp, len(failures), failures)
	checkSplit("restarted", restarted)
	if err := p.stop(); err != nil {
		t.Errorf("steal ended with %v; output:\n%s", err, p.output())
	}
	gm, _, _ := p.waitLine(from, "stderr", regexp.MustCompile(`^(\d+) pods joined during the session: Ready -> joined p50 (\S+), max (\S+)$`), time.Second)
	t.Logf("MEASURE %s", gm[0])
	if strings.Contains(p.text(), "lost the agent") {
		t.Errorf("a pod's agent was reported lost:\n%s", p.output())
	}
}

// lineAt is when p printed its first stderr line matching expr (after the progress timer), or -1.
func lineAt(p *pfProc, expr string) time.Duration {
	re := regexp.MustCompile(`^\[\s*[0-9.]+s\] ` + expr)
	for _, l := range p.snapshot() {
		if l.stream == "stderr" && re.MatchString(l.text) {
			return l.at
		}
	}
	return -1
}

// TestWorkloadMirrorAndDump: mirror and dump of a 2-replica Deployment cover both pods: the copies of
// requests to either reach the local process, every line names its pod, and the counts come per pod
// and in total.
func TestWorkloadMirrorAndDump(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 6*time.Minute)
	ns := newNamespace(t, "workload-mirror")
	labels := map[string]string{"app": "echo"}
	createEchoDeployment(ctx, t, ns, labels, 2)
	clusterIP := echoService(ctx, t, ns, labels)
	pods := readyPodNames(ctx, t, ns, labels, 2)
	waitAnswer(ctx, t, time.Minute, "http://"+clusterIP+"/", pods[0])
	local := startLocalServer(t)

	m := pluginStart(t, "mirror", "mirror", ns, "svc/echo", "--port", fmt.Sprintf("80:%d", local.Port))
	m.waitLine(0, "stderr", regexp.MustCompile(`mirroring port 8080 -> .* on 2/2 pods of svc/echo$`), 3*time.Minute)
	d := pluginStart(t, "dump", "dump", ns, "deploy/echo", "--port", "8080")
	d.waitLine(0, "stderr", regexp.MustCompile(`capturing ports 8080 in 2/2 pods of deploy/echo$`), 3*time.Minute)

	answered := map[string]bool{}
	for i := 0; i < 30 || len(answered) < 2; i++ {
		if i == 200 {
			t.Fatalf("200 requests through the Service reached only %v", answered)
		}
		r, err := getJSON(ctx, fmt.Sprintf("http://%s/both/%d", clusterIP, i), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		answered[r.Pod] = true
	}
	for _, pod := range pods {
		m.waitLine(0, "stdout", regexp.MustCompile(`^\[pod/`+regexp.QuoteMeta(pod)+`\] \d\d:\d\d:\d\d \S+ GET /both/\d+ -> 200`), 30*time.Second)
		d.waitLine(0, "stdout", regexp.MustCompile(`^\[pod/`+regexp.QuoteMeta(pod)+`\] \S+ \S+ HTTP/1.1 GET /both/\d+ 200 `), 30*time.Second)
	}
	eventually(ctx, t, 30*time.Second, "a copy of every request", func(context.Context) (bool, string) {
		n := 0
		for _, r := range local.requests() {
			if strings.HasPrefix(r.Path, "/both/") {
				n++
			}
		}
		return n >= 30, fmt.Sprintf("%d copies", n)
	})
	if err := m.stop(); err != nil {
		t.Errorf("mirror ended with %v", err)
	}
	if err := d.stop(); err != nil {
		t.Errorf("dump ended with %v", err)
	}
	for _, pod := range pods {
		m.waitLine(0, "stderr", regexp.MustCompile(`^pod `+regexp.QuoteMeta(pod)+`: \d+ requests? seen on `), time.Second)
		d.waitLine(0, "stderr", regexp.MustCompile(`^pod `+regexp.QuoteMeta(pod)+`: \d+ packets captured, \d+ dropped by the kernel$`), time.Second)
	}
	m.waitLine(0, "stderr", regexp.MustCompile(`^total \(2 pods\): \d+ requests? seen on \d+ connections?, \d+ mirrored`), time.Second)
	d.waitLine(0, "stderr", regexp.MustCompile(`^total \(2 pods\): \d+ packets captured`), time.Second)
}

// createEchoDeployment creates Deployment "echo" of peer-echo pods (Ready once :8080 answers) and waits
// for its replicas to be ready.
func createEchoDeployment(ctx context.Context, t *testing.T, ns string, labels map[string]string, replicas int32) {
	t.Helper()
	tmpl := pfEchoPod(t, "", labels, false)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: tmpl.Spec},
		},
	}
	if _, err := client(t).AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	readyPodNames(ctx, t, ns, labels, int(replicas))
}

// readyPodNames waits until exactly n pods with labels are ready and none is terminating, and returns
// their names, sorted.
func readyPodNames(ctx context.Context, t *testing.T, ns string, labels map[string]string, n int) []string {
	t.Helper()
	var names []string
	sel := metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: labels})
	eventually(ctx, t, 4*time.Minute, fmt.Sprintf("%d ready pods", n), func(ctx context.Context) (bool, string) {
		list, err := client(t).CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return false, err.Error()
		}
		names = nil
		others := 0
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil && podReady(&p) {
				names = append(names, p.Name)
			} else {
				others++
			}
		}
		sort.Strings(names)
		return len(names) == n && others == 0, fmt.Sprintf("ready %q, %d others", names, others)
	})
	return names
}

func podIP(ctx context.Context, t *testing.T, ns, name string) string {
	t.Helper()
	p, err := client(t).CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Status.PodIP
}
