package main

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestGuardUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"abc"},
		{"abc", "1", "extra"},
		{"Bad-ID", "1"},
		{"abc", "0"},
		{"abc", "-5"},
		{"abc", "self"},
	} {
		var stderr syncBuffer
		err := runGuard(context.Background(), args, &stderr)
		if !errors.Is(err, errUsage) {
			t.Errorf("runGuard(%q) = %v, want a usage error", args, err)
		}
		if stderr.String() == "" {
			t.Errorf("runGuard(%q) explained nothing on stderr", args)
		}
	}
}

// A signal while the session runs stops the guard quietly and deletes nothing: the guard watches
// this very test process, which outlives it.
func TestGuardStopsOnSignal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var stderr syncBuffer
	if err := runGuard(ctx, []string{"abc", strconv.Itoa(os.Getpid())}, &stderr); err != nil {
		t.Fatalf("runGuard = %v, want nil", err)
	}
	if !strings.Contains(stderr.String(), "its table stays") {
		t.Errorf("stderr = %q", stderr.String())
	}
}
