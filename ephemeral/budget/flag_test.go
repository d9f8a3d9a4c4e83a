package budget

import (
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFlag(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    int64
		wantErr string
	}{
		{args: nil, want: DefaultLimit},
		{args: []string{"--memory-budget=268435456"}, want: 256 << 20},
		{args: []string{"--memory-budget=256Mi"}, wantErr: `not a number of bytes: "256Mi"`},
		{args: []string{"--memory-budget=1048576"}, wantErr: `"1048576" is below the agent's own baseline`},
	} {
		var f Flag
		fs := flag.NewFlagSet("agent", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		fs.Var(&f, FlagName, FlagUsage)
		err := fs.Parse(tc.args)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%q: error %v, want one line with %q", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if diff := cmp.Diff(tc.want, f.Limit()); diff != "" {
			t.Errorf("%q: limit (-want +got):\n%s", tc.args, diff)
		}
	}
}
