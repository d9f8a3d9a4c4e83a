//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// bindUser gives user (impersonated with --as, as the admin's kubeconfig may) a Role with rules in ns.
func bindUser(ctx context.Context, t *testing.T, ns, user string, rules []rbacv1.PolicyRule) {
	t.Helper()
	c := client(t)
	if _, err := c.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: user}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: user},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// sessionRow is the part of `sessions -o json`'s items this test reads.
type sessionRow struct {
	Pod, Agent, State, ID, User, Host string
	Verbs                             []string
	Ports                             []int
	Filters                           []string
	ExitsAt                           *time.Time
	Requests                          int64
}

func listSessions(ctx context.Context, t *testing.T, ns, as string) []sessionRow {
	t.Helper()
	out, _, err := kubectl(ctx, t, "", "trafficlab", "sessions", "-n", ns, "--as="+as, "-o", "json")
	if err != nil {
		t.Fatalf("sessions as %s: %v", as, err)
	}
	var list struct {
		APIVersion, Kind string
		Items            []sessionRow
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("sessions -o json: %v\n%s", err, out)
	}
	if list.APIVersion != "trafficlab.dev/v1alpha1" || list.Kind != "SessionList" {
		t.Errorf("sessions -o json is a %s %s, want a trafficlab.dev/v1alpha1 SessionList", list.APIVersion, list.Kind)
	}
	return list.Items
}

// Two users (impersonated, each with only their own Role) run a steal and a port-forward on one pod;
// a third, with only list pods and pods/exec, lists both sessions with their users and ends the
// steal: its plugin says who ended it and exits non-zero, while the port-forward goes on.
func TestSessionsListAndEnd(t *testing.T) {
	ctx := testContext(t, 8*time.Minute)
	st := newStealTarget(ctx, t, "sessions")
	session := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods/exec", "pods/portforward"}, Verbs: []string{"create", "get"}}}
	bindUser(ctx, t, st.ns, "alice", podRules(session...))
	bindUser(ctx, t, st.ns, "bob", podRules(session...))
	bindUser(ctx, t, st.ns, "carol", []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}},
		{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"create", "get"}},
	})

	alice := stealStart(t, "alice's steal", st.ns, "--as=alice", "pod/target", "--port", fmt.Sprintf("8080:%d", st.local.Port), "--header-filter", "^X-Dev: alice$")
	_, aliceID, _ := alice.connected(time.Second)
	bob := pluginStart(t, "bob's port-forward", "port-forward", st.ns, "--as=bob", "pod/target", ":8080")
	_, bobID, _ := bob.connected(3 * time.Minute)
	bobPort, _ := bob.localPort("localhost:8080", time.Minute)
	bobURL := fmt.Sprintf("http://127.0.0.1:%d/", bobPort)
	waitAnswer(ctx, t, time.Minute, bobURL, "target")

	// A user without exec is refused in one line that names the rule.
	_, stderr, err := kubectl(ctx, t, "", "trafficlab", "sessions", "-n", st.ns, "--as=nobody")
	if err == nil || !strings.Contains(stderr, `missing RBAC permissions: apiGroups: [""], resources: ["pods"], verbs: ["list"]; apiGroups: [""], resources: ["pods/exec"]`) {
		t.Errorf("sessions without RBAC: %v, stderr %q; want the missing rules", err, stderr)
	}

	// One request of alice's reaches her local server through the Service; the listing counts it.
	if r, err := getJSON(ctx, st.svcURL("/mine"), http.Header{"X-Dev": {"alice"}}, nil); err != nil || r.Pod != "laptop" {
		t.Errorf("alice's request answered by %q, %v; want her local server", r.Pod, err)
	}
	byID := map[string]sessionRow{}
	for _, s := range listSessions(ctx, t, st.ns, "carol") {
		byID[s.ID] = s
	}
	if a := byID[aliceID]; a.User != "alice" || a.Host == "" || a.Pod != "target" || !strings.Contains(strings.Join(a.Verbs, ","), "steal") ||
		fmt.Sprint(a.Ports) != "[8080]" || fmt.Sprint(a.Filters) != "[header=^X-Dev: alice$]" || a.Requests != 1 {
		t.Errorf("alice's session is listed as %+v, want user alice stealing 8080 with her filter, 1 request", a)
	}
	if b := byID[bobID]; b.User != "bob" || b.Pod != "target" || fmt.Sprint(b.Verbs) != "[dial]" {
		t.Errorf("bob's session is listed as %+v, want user bob dialing", b)
	}
	table, _, err := kubectl(ctx, t, "", "trafficlab", "sessions", "-n", st.ns, "--as=carol", "-o", "wide")
	if err != nil || !regexp.MustCompile(`(?m)^POD +AGENT +SESSION +USER +MACHINE +VERB +PORTS +FILTERS +SINCE +BYTES +REQUESTS +CONNECTIONS$`).MatchString(table) ||
		!strings.Contains(table, aliceID) || !strings.Contains(table, bobID) {
		t.Errorf("sessions -o wide: %v\n%s", err, table)
	}

	out, _, err := kubectl(ctx, t, "", "trafficlab", "sessions", "end", aliceID, "-n", st.ns, "--as=carol")
	if err != nil || !strings.Contains(out, "ended session "+aliceID+" of alice") {
		t.Fatalf("sessions end: %v, %q", err, out)
	}
	err = alice.waitExit(time.Minute)
	if err == nil {
		t.Errorf("alice's plugin exited 0 after her session was ended, want non-zero")
	}
	if want := "error: the session was ended by carol from "; !strings.Contains(alice.output(), want) ||
		!strings.Contains(alice.output(), "with `kubectl trafficlab sessions end`") {
		t.Errorf("alice's plugin did not say who ended her session (%q); output:\n%s", want, alice.output())
	}
	// Bob's session is untouched: his forward still answers, and the listing has only his session.
	if _, err := getJSON(ctx, bobURL, nil, nil); err != nil {
		t.Errorf("bob's port-forward after alice's end: %v", err)
	}
	eventually(ctx, t, time.Minute, "only bob's session listed", func(ctx context.Context) (bool, string) {
		rows := listSessions(ctx, t, st.ns, "carol")
		var ids []string
		for _, r := range rows {
			if r.State == "active" {
				ids = append(ids, r.ID)
			}
		}
		return fmt.Sprint(ids) == fmt.Sprint([]string{bobID}), fmt.Sprint(ids)
	})
	select {
	case <-bob.done:
		t.Errorf("bob's plugin ended with alice's session:\n%s", bob.output())
	default:
	}

	// -A needs the rules cluster-wide, which carol's Role does not give; an admin sees bob's session.
	_, stderr, err = kubectl(ctx, t, "", "trafficlab", "sessions", "-A", "--as=carol")
	if err == nil || !strings.Contains(stderr, "in every namespace (a ClusterRole)") {
		t.Errorf("sessions -A as carol: %v, stderr %q; want the cluster-wide rules missing", err, stderr)
	}
	all, _, err := kubectl(ctx, t, "", "trafficlab", "sessions", "-A")
	if err != nil || !regexp.MustCompile(`(?m)^`+st.ns+` +target +trafficlab-[a-z0-9]+ +`+bobID+` +bob `).MatchString(all) {
		t.Errorf("sessions -A as the admin: %v\n%s", err, all)
	}

	// With no session left the agent is listed as idle, with the end its idle timeout sets.
	if err := bob.stop(); err != nil {
		t.Errorf("bob's port-forward ended with %v on Ctrl-C", err)
	}
	eventually(ctx, t, time.Minute, "the agent listed as idle", func(ctx context.Context) (bool, string) {
		rows := listSessions(ctx, t, st.ns, "carol")
		return len(rows) == 1 && rows[0].State == "idle" && rows[0].ExitsAt != nil && rows[0].ExitsAt.After(time.Now()), fmt.Sprintf("%+v", rows)
	})
}
