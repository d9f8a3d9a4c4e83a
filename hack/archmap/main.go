// Command archmap checks docs/architecture.md against the module's real import graph (go list), so
// the package map stays true at every commit.
//
// The map has one list line per package directory:
//
//   - `pkg/cmd/steal/` — what it does. → `pkg/agent/session`, `pkg/local/deliver`
//
// Everything after the last " → " of a package line names that package's direct imports inside this
// module (production code: no test files, the default build tags), and must name exactly those. A
// line without " → " says the package imports nothing of the module. Other lines may draw chains
// (`a` → `b` → `c`); each arrow of a chain must be a direct import.
//
// Usage: go run ./hack/archmap [-fix] [-doc docs/architecture.md]
// With -fix the import clauses of package lines are rewritten from go list; chains are only checked.
// Every problem is one line on stderr and the exit code is 1.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
)

const arrow = " → "

// listedPackage is the part of `go list -json` that the map is about.
type listedPackage struct {
	ImportPath string
	Dir        string
	Imports    []string
	Module     *struct{ Path, Dir string }
}

func main() {
	fix := flag.Bool("fix", false, "rewrite the import clause of every package line from go list")
	doc := flag.String("doc", "docs/architecture.md", "the package map to check")
	flag.Parse()
	graph, err := loadGraph()
	if err == nil {
		var problems []string
		problems, err = run(*doc, graph, *fix)
		for _, p := range problems {
			fmt.Fprintln(os.Stderr, "archmap: "+p)
		}
		if err == nil && len(problems) > 0 {
			os.Exit(1)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "archmap: "+err.Error())
		os.Exit(1)
	}
}

// loadGraph maps each package directory of the module (relative, no trailing slash) to the
// directories of the module packages it imports.
func loadGraph() (map[string][]string, error) {
	// The e2e and kernel tags bring in test/e2e (test files only) and internal/testnet (kernel tests'
	// helper); Imports never lists test imports, so production edges stay what they are.
	cmd := exec.Command("go", "list", "-tags", "e2e,kernel", "-json=ImportPath,Dir,Imports,Module", "./...")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list ./...: %w", err)
	}
	return parseGraph(out)
}

func parseGraph(out []byte) (map[string][]string, error) {
	var pkgs []listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("reading go list output: %w", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) == 0 || pkgs[0].Module == nil {
		return nil, errors.New("go list found no module packages; run from the module root")
	}
	mod := pkgs[0].Module.Path
	graph := make(map[string][]string, len(pkgs))
	for _, p := range pkgs {
		dir := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, mod), "/")
		var deps []string
		for _, imp := range p.Imports {
			if imp == mod || strings.HasPrefix(imp, mod+"/") {
				deps = append(deps, strings.TrimPrefix(imp, mod+"/"))
			}
		}
		slices.Sort(deps)
		graph[dir] = deps
	}
	return graph, nil
}

var (
	packageLine = regexp.MustCompile("^- `([^`]+)/` — ")
	codeSpan    = regexp.MustCompile("`([^`]+)`")
)

// run checks (and with fix rewrites) the map; problems are the user's to fix, err is ours.
func run(path string, graph map[string][]string, fix bool) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the package map: %w", err)
	}
	out, problems := check(path, string(data), graph, fix)
	if fix && out != string(data) {
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			return nil, fmt.Errorf("writing the package map: %w", err)
		}
	}
	return problems, nil
}

// check returns the map with corrected import clauses and the problems found in the original.
func check(path, doc string, graph map[string][]string, fix bool) (string, []string) {
	var problems []string
	var out strings.Builder
	described := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(doc))
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		where := fmt.Sprintf("%s:%d", path, n)
		if m := packageLine.FindStringSubmatch(line); m != nil {
			dir := m[1]
			deps, ok := graph[dir]
			if !ok {
				problems = append(problems, fmt.Sprintf("%s: %q is not a package of this module; remove or rename the line", where, dir+"/"))
				out.WriteString(line + "\n")
				continue
			}
			described[dir] = true
			text, claimed := splitClause(line)
			if !slices.Equal(claimed, deps) && !fix {
				problems = append(problems, fmt.Sprintf("%s: `%s/` imports %s but the map says %s; run `go run ./hack/archmap -fix`",
					where, dir, listOrNothing(deps), listOrNothing(claimed)))
			}
			out.WriteString(text + clause(deps) + "\n")
			continue
		}
		problems = append(problems, checkChains(where, line, graph)...)
		out.WriteString(line + "\n")
	}
	var missing []string
	for dir := range graph {
		if !described[dir] {
			missing = append(missing, dir)
		}
	}
	slices.Sort(missing)
	for _, dir := range missing {
		problems = append(problems, fmt.Sprintf("%s: no line for `%s/`; add \"- `%s/` — <what it does>\" and run `go run ./hack/archmap -fix`", path, dir, dir))
	}
	return out.String(), problems
}

// splitClause splits a package line into its text and the imports its clause names.
func splitClause(line string) (string, []string) {
	i := strings.LastIndex(line, arrow)
	if i < 0 {
		return line, nil
	}
	var deps []string
	for _, m := range codeSpan.FindAllStringSubmatch(line[i+len(arrow):], -1) {
		deps = append(deps, strings.TrimSuffix(m[1], "/"))
	}
	slices.Sort(deps)
	return line[:i], deps
}

func clause(deps []string) string {
	if len(deps) == 0 {
		return ""
	}
	spans := make([]string, len(deps))
	for i, d := range deps {
		spans[i] = "`" + d + "`"
	}
	return arrow + strings.Join(spans, ", ")
}

func listOrNothing(deps []string) string {
	if len(deps) == 0 {
		return "nothing of the module"
	}
	return strings.Join(deps, ", ")
}

// checkChains checks every "`a` → `b`" arrow of a prose line: b must be a direct import of a.
func checkChains(where, line string, graph map[string][]string) []string {
	var problems []string
	parts := strings.Split(line, "→")
	for i := 0; i+1 < len(parts); i++ {
		from := lastSpan(parts[i])
		to := firstSpan(parts[i+1])
		if from == "" || to == "" {
			continue
		}
		deps, ok := graph[from]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("%s: the chain names `%s`, which is not a package of this module", where, from))
		case !slices.Contains(deps, to):
			problems = append(problems, fmt.Sprintf("%s: the chain draws `%s` → `%s`, but %s does not import %s; fix the arrow", where, from, to, from, to))
		}
	}
	return problems
}

// lastSpan is the code span that ends s (an arrow's tail), firstSpan the one that starts it.
func lastSpan(s string) string {
	// "`a` (→ `b`" draws a → b as well.
	s = strings.TrimRight(s, " (")
	if !strings.HasSuffix(s, "`") {
		return ""
	}
	i := strings.LastIndex(s[:len(s)-1], "`")
	if i < 0 {
		return ""
	}
	return strings.TrimSuffix(s[i+1:len(s)-1], "/")
}

func firstSpan(s string) string {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "`") {
		return ""
	}
	j := strings.Index(s[1:], "`")
	if j < 0 {
		return ""
	}
	return strings.TrimSuffix(s[1:1+j], "/")
}
