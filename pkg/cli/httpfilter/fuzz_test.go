package httpfilter

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// FuzzFlags parses the filter flags as a verb's command line gives them. What Validate accepts must
// reach the agent intact and compile there (the plugin refuses before injection exactly what the
// agent would refuse); what it refuses, it refuses naming the flag and quoting the value. (Not always
// in one line: regexp2's reason repeats the pattern raw, newlines and all.)
func FuzzFlags(f *testing.F) {
	f.Add("^X-Dev: alice$", "^/api/(?!health)", "GET,post", "all")
	f.Add("(?i)x-user: [a-z]+", "", "", "any")
	f.Add("(", "", "", "all")
	f.Add("", "[a-", "", "all")
	f.Add("", "", "GET,BAD METHOD", "any")
	f.Add("", "", `"a,b",c`, "some")
	f.Add("a\nb(", "", "", "all")
	f.Fuzz(func(t *testing.T, header, path, methods, match string) {
		var fl Flags
		fs := pflag.NewFlagSet("steal", pflag.ContinueOnError)
		fl.AddFlags(fs, "Steal")
		var args []string
		if header != "" {
			args = append(args, "--header-filter="+header)
		}
		if path != "" {
			args = append(args, "--path-filter="+path)
		}
		if methods != "" {
			args = append(args, "--method="+methods)
		}
		if match != "" {
			args = append(args, "--match="+match)
		}
		if err := fs.Parse(args); err != nil {
			return // pflag's own refusal (e.g. a --method list that is not CSV)
		}
		err := fl.Validate()
		if err != nil {
			first, _, _ := strings.Cut(err.Error(), "\n")
			named := false
			for _, v := range []struct{ flag, value string }{
				{"--header-filter", header}, {"--path-filter", path}, {"--method", ""}, {"--match", match},
			} {
				// --method quotes the one list item it refuses
				named = named || strings.HasPrefix(first, v.flag) && (v.value == "" || strings.Contains(first, strconv.Quote(v.value)))
			}
			if !named {
				t.Fatalf("refusal does not name the flag and its value: %q", err)
			}
			return
		}
		// The filter travels to the agent as JSON inside the steal request.
		b, err := json.Marshal(wire.StealSpec{Ports: []int{80}, Filter: fl.Filter()})
		if err != nil {
			t.Fatal(err)
		}
		var spec wire.StealSpec
		if err := json.Unmarshal(b, &spec); err != nil {
			t.Fatalf("agent cannot decode %s: %v", b, err)
		}
		if err := spec.Filter.Validate(); err != nil {
			t.Fatalf("plugin accepted %+v, agent refuses %+v: %v", fl, spec.Filter, err)
		}
		m, err := spec.Filter.Compile()
		if err != nil {
			t.Fatalf("agent cannot compile %+v: %v", spec.Filter, err)
		}
		if (m == nil) != fl.Filter().Empty() {
			t.Fatalf("matcher %v for filter %+v", m, fl.Filter())
		}
	})
}
