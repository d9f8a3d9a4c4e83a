package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCheck(t *testing.T) {
	graph := map[string][]string{
		"pkg/cmd/steal":     {"pkg/agent/session", "pkg/wire"},
		"pkg/agent/session": {"pkg/wire"},
		"pkg/wire":          nil,
	}
	tests := []struct {
		name     string
		doc      string
		want     string // the map after -fix
		problems []string
	}{{
		name: "true map",
		doc: "Path: `pkg/cmd/steal` → `pkg/agent/session` → `pkg/wire`.\n" +
			"- `pkg/cmd/steal/` — the verb. → `pkg/agent/session`, `pkg/wire`\n" +
			"- `pkg/agent/session/` — reaching the agent. → `pkg/wire`\n" +
			"- `pkg/wire/` — the protocol.\n",
	}, {
		name: "an arrow the code does not have, a missing import, a missing and an extra line",
		doc: "Path: `pkg/wire` → `pkg/cmd/steal`; `pkg/agent/session` (→ `pkg/cmd/steal`).\n" +
			"- `pkg/cmd/steal/` — the verb. → `pkg/wire`\n" +
			"- `pkg/agent/session/` — reaching the agent. → `pkg/wire`, `pkg/cmd/steal`\n" +
			"- `pkg/gone/` — removed.\n",
		want: "Path: `pkg/wire` → `pkg/cmd/steal`; `pkg/agent/session` (→ `pkg/cmd/steal`).\n" +
			"- `pkg/cmd/steal/` — the verb. → `pkg/agent/session`, `pkg/wire`\n" +
			"- `pkg/agent/session/` — reaching the agent. → `pkg/wire`\n" +
			"- `pkg/gone/` — removed.\n",
		problems: []string{
			"m.md:1: the chain draws `pkg/wire` → `pkg/cmd/steal`, but pkg/wire does not import pkg/cmd/steal; fix the arrow",
			"m.md:1: the chain draws `pkg/agent/session` → `pkg/cmd/steal`, but pkg/agent/session does not import pkg/cmd/steal; fix the arrow",
			"m.md:2: `pkg/cmd/steal/` imports pkg/agent/session, pkg/wire but the map says pkg/wire; run `go run ./hack/archmap -fix`",
			"m.md:3: `pkg/agent/session/` imports pkg/wire but the map says pkg/cmd/steal, pkg/wire; run `go run ./hack/archmap -fix`",
			`m.md:4: "pkg/gone/" is not a package of this module; remove or rename the line`,
			"m.md: no line for `pkg/wire/`; add \"- `pkg/wire/` — <what it does>\" and run `go run ./hack/archmap -fix`",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, problems := check("m.md", tt.doc, graph, false)
			if diff := cmp.Diff(tt.problems, problems); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			want := tt.want
			if want == "" {
				want = tt.doc
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("fixed map (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseGraph(t *testing.T) {
	out := `{"ImportPath":"example.com/m/a","Imports":["fmt","example.com/m/b","example.com/other/c"],"Module":{"Path":"example.com/m"}}
{"ImportPath":"example.com/m/b","Module":{"Path":"example.com/m"}}`
	graph, err := parseGraph([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"a": {"b"}, "b": nil}
	if diff := cmp.Diff(want, graph); diff != "" {
		t.Errorf("graph (-want +got):\n%s", diff)
	}
	if _, err := parseGraph([]byte(strings.Repeat(" ", 3))); err == nil {
		t.Error("an empty go list output was accepted")
	}
}
