package progress

import (
	"bytes"
	"testing"
	"time"
)

func TestStepf(t *testing.T) {
	var buf bytes.Buffer
	p := New(&buf, false)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p.start = start
	steps := []time.Duration{420 * time.Millisecond, 12345 * time.Millisecond}
	i := 0
	p.now = func() time.Time { d := steps[i]; i++; return start.Add(d) }

	p.Stepf("adding agent %s to pod %s", "trafficlab-abcde", "default/web")
	p.Stepf("agent running")

	want := "[ 0.42s] adding agent trafficlab-abcde to pod default/web\n[12.35s] agent running\n"
	if got := buf.String(); got != want {
		t.Errorf("output:\n%q\nwant\n%q", got, want)
	}
}

func TestQuietPrintsNothing(t *testing.T) {
	var buf bytes.Buffer
	p := New(&buf, true)
	p.Stepf("anything %d", 1) // a nil Printer must not panic
	if buf.Len() != 0 {
		t.Errorf("quiet printer wrote %q", buf.String())
	}
}
