package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Status is the outcome of one check or verb. The JSON output carries these values as they are.
type Status string

// The statuses. Only the verbs' statuses decide the exit code; the checks' explain them.
const (
	// StatusOK: works (a verb), or the check found nothing in the way.
	StatusOK Status = "ok"
	// StatusWarn: works, but not the best way (data over exec), or the check found something to know.
	StatusWarn Status = "warn"
	// StatusFail: the verb cannot be used here; Fix says what would change that, when anything can.
	StatusFail Status = "fail"
	// StatusUnknown: the server or the user's access cannot tell.
	StatusUnknown Status = "unknown"
	// StatusHint: read from the node or the namespace, not proven by the server (kernel, runtime).
	StatusHint Status = "hint"
	// StatusSkip: the check needs a target pod (TYPE/NAME).
	StatusSkip Status = "skip"
)

// Exit codes of `doctor`, for scripts. Any other error (no kubeconfig, no server, a pod that does not
// exist) exits 1 with an "error: " line, as every verb does.
const (
	// ExitUsable: every verb works (some maybe as a warn line says, e.g. with data over exec).
	ExitUsable = 0
	// ExitUnusable: at least one verb cannot be used.
	ExitUnusable = 3
	// ExitUnknown: no verb is known to fail, but at least one cannot be told.
	ExitUnknown = 4
)

// Line is one check or one verb.
type Line struct {
	// Name is the check (server, agent-image, ephemeral-containers, rbac-agent, rbac-exec, rbac-port-forward,
	// podsecurity, webhooks, pod, node, kernel, runtime, mesh) or the verb (steal, mirror-redirect,
	// mirror-sniff, dump, port-forward, exec).
	Name    string `json:"name"`
	Status  Status `json:"status"`
	Message string `json:"message"`
	// How is, for a usable verb, what it needs beyond the defaults: a flag (--add-net-raw) or the data
	// path it falls back to ("data over exec").
	How string `json:"how,omitempty"`
	// Fix is, for a failing line, what to change (the Role rule to add, the namespace label).
	Fix string `json:"fix,omitempty"`
}

// Report is everything doctor found, in the order it checked.
type Report struct {
	Namespace string `json:"namespace"`
	// Pod is NAMESPACE/NAME of the target pod; empty for the namespace-level checks.
	Pod    string `json:"pod,omitempty"`
	Checks []Line `json:"checks"`
	Verbs  []Line `json:"verbs"`
	// ExitCode is the command's exit code (ExitUsable, ExitUnusable, ExitUnknown).
	ExitCode int `json:"exitCode"`
}

// exitCode derives the exit code from the verbs: one failing verb makes the cluster unusable for it,
// which scripts need to know even when another verb cannot be told.
func exitCode(verbs []Line) int {
	code := ExitUsable
	for _, v := range verbs {
		switch v.Status {
		case StatusFail:
			return ExitUnusable
		case StatusUnknown:
			code = ExitUnknown
		}
	}
	return code
}

// WriteText prints one line per check and per verb, kubectl-style, then which verbs work.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, l := range append(append([]Line(nil), r.Checks...), r.Verbs...) {
		msg := l.Message
		if l.How != "" {
			msg += " (" + l.How + ")"
		}
		if l.Fix != "" {
			msg += "; " + l.Fix
		}
		fmt.Fprintf(&b, "%-8s %-20s %s\n", strings.ToUpper(string(l.Status)), l.Name, msg)
	}
	var usable, unusable, unknown []string
	for _, v := range r.Verbs {
		switch v.Status {
		case StatusOK, StatusWarn:
			usable = append(usable, v.Name)
		case StatusFail:
			unusable = append(unusable, v.Name)
		default:
			unknown = append(unknown, v.Name)
		}
	}
	fmt.Fprintf(&b, "usable: %s; unusable: %s; unknown: %s\n", orNone(usable), orNone(unusable), orNone(unknown))
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the report as one indented JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func orNone(list []string) string {
	if len(list) == 0 {
		return "none"
	}
	return strings.Join(list, ", ")
}
