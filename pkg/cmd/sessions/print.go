package sessions

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/cli-runtime/pkg/printers"

	"github.com/trafficlab/kubectl-trafficlab/pkg/cli/lineout"
)

// The list's type, for -o json and yaml: versioned, so that a script can tell a later shape apart.
const (
	listAPIVersion = "trafficlab.dev/v1alpha1"
	listKind       = "SessionList"
)

// Session states.
const (
	StateActive = "active"
	// StateIdle is an agent with no session, which its idle timeout will end (ExitsAt).
	StateIdle = "idle"
)

// Session is one row: a session of an agent, or an agent with none (State idle, no ID).
type Session struct {
	Namespace    string `json:"namespace"`
	Pod          string `json:"pod"`
	Agent        string `json:"agent"`
	AgentVersion string `json:"agentVersion,omitempty"`
	State        string `json:"state"`
	// ExitsAt is when an idle agent's idle timeout ends it; none for an agent without a timeout.
	ExitsAt     *time.Time `json:"exitsAt,omitempty"`
	ID          string     `json:"id,omitempty"`
	User        string     `json:"user,omitempty"`
	Host        string     `json:"host,omitempty"`
	Verbs       []string   `json:"verbs,omitempty"`
	Ports       []int      `json:"ports,omitempty"`
	Filters     []string   `json:"filters,omitempty"`
	Since       time.Time  `json:"since,omitzero"`
	Bytes       int64      `json:"bytes"`
	Connections int64      `json:"connections"`
	Requests    int64      `json:"requests"`
}

// SessionList is what -o json and -o yaml print.
type SessionList struct {
	metav1.TypeMeta `json:",inline"`
	Items           []Session `json:"items"`
}

// DeepCopyObject makes SessionList a runtime.Object for cli-runtime's printers.
func (l *SessionList) DeepCopyObject() runtime.Object {
	c := &SessionList{TypeMeta: l.TypeMeta, Items: make([]Session, len(l.Items))}
	for i, s := range l.Items {
		s.Verbs, s.Ports, s.Filters = slices.Clone(s.Verbs), slices.Clone(s.Ports), slices.Clone(s.Filters)
		if s.ExitsAt != nil {
			t := *s.ExitsAt
			s.ExitsAt = &t
		}
		c.Items[i] = s
	}
	return c
}

func newList(items []Session) *SessionList {
	l := &SessionList{Items: items}
	if l.Items == nil {
		l.Items = []Session{}
	}
	l.SetGroupVersionKind(schema.FromAPIVersionAndKind(listAPIVersion, listKind))
	return l
}

// write writes the sessions in format: a table (wide too) as kubectl get prints one, or the list.
func write(w io.Writer, format string, allNamespaces bool, now time.Time, items []Session) error {
	switch format {
	case "json":
		return (&printers.JSONPrinter{}).PrintObj(newList(items), w)
	case "yaml":
		return (&printers.YAMLPrinter{}).PrintObj(newList(items), w)
	}
	p := printers.NewTablePrinter(printers.PrintOptions{Wide: format == "wide"})
	return p.PrintObj(table(items, allNamespaces, now), w)
}

// table is the sessions as kubectl's table printer takes them; the wide columns have priority 1.
func table(items []Session, allNamespaces bool, now time.Time) *metav1.Table {
	t := &metav1.Table{}
	if allNamespaces {
		t.ColumnDefinitions = append(t.ColumnDefinitions, metav1.TableColumnDefinition{Name: "Namespace", Type: "string"})
	}
	t.ColumnDefinitions = append(t.ColumnDefinitions, []metav1.TableColumnDefinition{
		{Name: "Pod", Type: "string"},
		{Name: "Agent", Type: "string"},
		{Name: "Session", Type: "string"},
		{Name: "User", Type: "string"},
		{Name: "Machine", Type: "string"},
		{Name: "Verb", Type: "string"},
		{Name: "Ports", Type: "string"},
		{Name: "Filters", Type: "string"},
		{Name: "Since", Type: "string"},
		{Name: "Bytes", Type: "integer", Priority: 1},
		{Name: "Requests", Type: "integer", Priority: 1},
		{Name: "Connections", Type: "integer", Priority: 1},
	}...)
	for _, s := range items {
		var cells []any
		if allNamespaces {
			cells = append(cells, s.Namespace)
		}
		cells = append(cells, s.Pod, s.Agent)
		if s.State == StateIdle {
			cells = append(cells, "<none>", "", "", idleVerb(s.ExitsAt, now), "", "", "", int64(0), int64(0), int64(0))
		} else {
			cells = append(cells, s.ID, orNone(s.User), orNone(s.Host), orNone(strings.Join(s.Verbs, ",")),
				orNone(ports(s.Ports)), orNone(strings.Join(s.Filters, ",")), age(now, s.Since), s.Bytes, s.Requests, s.Connections)
		}
		for i, c := range cells {
			// What the agent reported reaches a terminal: controls are printed as Go escapes them.
			if str, ok := c.(string); ok {
				cells[i] = lineout.Escape(str)
			}
		}
		t.Rows = append(t.Rows, metav1.TableRow{Cells: cells})
	}
	return t
}

// idleVerb says when an agent with no session goes.
func idleVerb(exitsAt *time.Time, now time.Time) string {
	if exitsAt == nil {
		return "idle"
	}
	if d := exitsAt.Sub(now); d > 0 {
		return "idle, exits in " + duration.HumanDuration(d)
	}
	return "idle, exiting"
}

func age(now, since time.Time) string {
	if since.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(since))
}

func ports(ps []int) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ",")
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

// String is one session in a sentence, for end's messages.
func (s Session) String() string {
	return fmt.Sprintf("session %s of %s (from %s) in pod %s/%s", s.ID, orNone(s.User), orNone(s.Host), s.Namespace, s.Pod)
}
