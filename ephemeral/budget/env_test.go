package budget

import (
	"bytes"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestLimitFromEnv(t *testing.T) {
	for _, tc := range []struct {
		env     map[string]string
		want    int64
		wantErr string
	}{
		{env: nil, want: DefaultLimit},
		{env: map[string]string{"TRAFFICLAB_MEMORY_BUDGET": "268435456"}, want: 256 << 20},
		{env: map[string]string{"TRAFFICLAB_MEMORY_BUDGET": "256Mi"}, wantErr: `TRAFFICLAB_MEMORY_BUDGET="256Mi" is not a number of bytes`},
	} {
		got, err := LimitFromEnv(func(k string) string { return tc.env[k] })
		if tc.wantErr != "" {
			if err == nil || err.Error() != tc.wantErr {
				t.Errorf("%v: error %v, want %q", tc.env, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.env, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%v: limit (-want +got):\n%s", tc.env, diff)
		}
	}
	if _, err := FromEnv(func(string) string { return "1048576" }, slog.Default()); err == nil || !strings.Contains(err.Error(), "below the agent's own baseline") {
		t.Errorf("a 1 MiB budget: error %v, want it refused", err)
	}
}

func TestLogChanges(t *testing.T) {
	var out bytes.Buffer
	var used atomic.Int64
	used.Store(2 * MinLimit)
	clk := &fakeClock{}
	clk.t.Store(1)
	b, err := New(MinLimit, Options{Now: clk.now, Usage: func() (int64, error) { return used.Load(), nil },
		OnChange: LogChanges(slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}})))})
	if err != nil {
		t.Fatal(err)
	}
	b.Over()
	used.Store(0)
	clk.advance(time.Second)
	b.Over()
	want := "level=WARN msg=\"over the memory budget: mirror copies are dropped, stolen streams wait\" used=134217728 limit=67108864\n" +
		"level=INFO msg=\"back under the memory budget\" used=0 limit=67108864\n"
	if diff := cmp.Diff(want, out.String()); diff != "" {
		t.Errorf("log (-want +got):\n%s", diff)
	}
}
