package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIsHelper(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want bool
	}{
		{[]string{"kubectl-trafficlab"}, false},
		{[]string{"kubectl-trafficlab", "exec", helperArg}, false},
		{[]string{"/proc/self/exe", helperArg}, true},
	} {
		if got := IsHelper(tt.args); got != tt.want {
			t.Errorf("IsHelper(%q) = %v, want %v", tt.args, got, tt.want)
		}
	}
}

func TestLookPathUsesCommandEnv(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "only-here")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := lookPath("only-here", []string{"PATH=/nonexistent", "PATH=" + dir})
	if err != nil || got != prog {
		t.Fatalf("lookPath = %q, %v; want %q (the last PATH wins, as in exec.Cmd)", got, err, prog)
	}
	if _, err := lookPath("only-here", []string{"PATH=/nonexistent"}); err == nil || !strings.Contains(err.Error(), `"only-here": executable file not found`) {
		t.Fatalf("lookPath error = %v, want not found", err)
	}
	if got, err := lookPath("./rel/prog", nil); err != nil || got != "./rel/prog" {
		t.Fatalf("lookPath of a path = %q, %v; want it unchanged", got, err)
	}
}

func TestLoopbackNetworks(t *testing.T) {
	for _, tt := range []struct{ network, fam, addr, err string }{
		{"tcp", "tcp4", "127.0.0.1:80", ""},
		{"tcp4", "tcp4", "127.0.0.1:80", ""},
		{"tcp6", "tcp6", "[::1]:80", ""},
		{"udp", "", "", `network "udp": only tcp, tcp4 and tcp6`},
	} {
		fam, addr, err := loopback(tt.network, 80)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("loopback(%q) error = %v, want %q", tt.network, err, tt.err)
			}
			continue
		}
		if err != nil || fam != tt.fam || addr != tt.addr {
			t.Errorf("loopback(%q) = %q, %q, %v; want %q, %q", tt.network, fam, addr, err, tt.fam, tt.addr)
		}
	}
}

func TestResolveLinks(t *testing.T) {
	dir := t.TempDir()
	resolveDir := filepath.Join(dir, "run", "resolve")
	if err := os.MkdirAll(resolveDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("run", filepath.Join(dir, "varrun")); err != nil {
		t.Fatal(err)
	}
	// resolv.conf -> varrun/resolve/stub-resolv.conf, which does not exist (the resolver is down).
	link := filepath.Join(dir, "resolv.conf")
	if err := os.Symlink("varrun/resolve/stub-resolv.conf", link); err != nil {
		t.Fatal(err)
	}
	realDir, err := filepath.EvalSymlinks(resolveDir)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(realDir, "stub-resolv.conf")
	if got := resolveLinks(link); got != want {
		t.Fatalf("resolveLinks = %q, want %q", got, want)
	}
	plain := filepath.Join(dir, "plain")
	if got := resolveLinks(plain); got != plain {
		t.Fatalf("resolveLinks(plain) = %q, want it unchanged", got)
	}
}

func TestCheckMessages(t *testing.T) {
	tun := filepath.Join(t.TempDir(), "tun") // missing
	sysctls := func(values map[string]string) func(string) (string, bool) {
		return func(name string) (string, bool) { v, ok := values[name]; return v, ok }
	}
	for _, tt := range []struct {
		name   string
		sysctl map[string]string
		euid   int
		want   string
	}{
		{"debian switch off", map[string]string{"kernel/unprivileged_userns_clone": "0"}, 1000,
			`unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0) and the sandbox needs one: enable them with "sudo sysctl -w kernel.unprivileged_userns_clone=1", or use --proxy`},
		{"no user namespaces at all", map[string]string{"user/max_user_namespaces": "0"}, 1000,
			`user namespaces are disabled (user.max_user_namespaces=0) and the sandbox needs one: enable them with "sudo sysctl -w user.max_user_namespaces=10000", or use --proxy`},
		{"root ignores the debian switch", map[string]string{"kernel/unprivileged_userns_clone": "0"}, 0,
			"is missing (no such file or directory) and the sandbox needs a TUN device: load the driver with \"sudo modprobe tun\", or use --proxy"},
		{"no TUN driver", nil, 1000,
			"is missing (no such file or directory) and the sandbox needs a TUN device: load the driver with \"sudo modprobe tun\", or use --proxy"},
	} {
		err := check(sysctls(tt.sysctl), tt.euid, tun)
		var ue *UnavailableError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %v, want one line containing %q", tt.name, err, tt.want)
		}
	}
}
