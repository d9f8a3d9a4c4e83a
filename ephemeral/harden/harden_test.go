package harden

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

func TestProcessWritesScoreBeforeNonDumpable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "oom_score_adj")
	if err := os.WriteFile(path, []byte("0"), 0o600); err != nil {
		t.Fatal(err)
	}
	var scoreAtNonDumpable string
	err := process(path, func() error {
		b, _ := os.ReadFile(path)
		scoreAtNonDumpable = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if scoreAtNonDumpable != strconv.Itoa(OOMScoreAdj) {
		t.Fatalf("score when the process became non-dumpable = %q, want %d written first", scoreAtNonDumpable, OOMScoreAdj)
	}
}

func TestProcessReportsEachStep(t *testing.T) {
	if err := process(filepath.Join(t.TempDir(), "missing", "oom_score_adj"), func() error { return nil }); err == nil {
		t.Fatal("want an error when the score cannot be written")
	}
	path := filepath.Join(t.TempDir(), "oom_score_adj")
	boom := errors.New("boom")
	if err := process(path, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the prctl error wrapped", err)
	}
}

// TestProcessInChild runs Process in a child process (it changes the calling process for good) and
// reads the child's score and dumpable flag from the outside.
func TestProcessInChild(t *testing.T) {
	if os.Getenv("HARDEN_CHILD") == "1" {
		if err := Process(); err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(3)
		}
		d, err := Dumpable()
		if err != nil || d {
			os.Exit(4)
		}
		os.Stdout.WriteString("ok\n")
		// Wait for the parent to read our score, then exit.
		b := make([]byte, 1)
		_, _ = os.Stdin.Read(b)
		os.Exit(0)
	}
	if own, _ := ReadOOMScoreAdj(os.Getpid()); own == OOMScoreAdj {
		t.Fatalf("the test process already runs at oom_score_adj %d, which its child would inherit: run it from a shell at a lower score", own)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestProcessInChild$")
	cmd.Env = append(os.Environ(), "HARDEN_CHILD=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	buf := make([]byte, 3)
	if _, err := stdout.Read(buf); err != nil || string(buf) != "ok\n" {
		stdin.Close()
		t.Fatalf("child did not harden itself: %q %v (exit %v)", buf, err, cmd.Wait())
	}
	got, err := ReadOOMScoreAdj(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if got != OOMScoreAdj {
		t.Fatalf("child's oom_score_adj = %d, want %d", got, OOMScoreAdj)
	}
}
