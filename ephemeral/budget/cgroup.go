package budget

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strconv"
	"strings"
)

// Paths are where the process's cgroup is described; tests point them at a fake tree.
type Paths struct {
	// Root prefixes every absolute path below ("/" on a real system).
	Root string
}

// HostPaths are the real system's.
func HostPaths() Paths { return Paths{Root: "/"} }

func (p Paths) path(abs string) string { return filepath.Join(p.Root, abs) }

// Cgroup is the memory cgroup of this process: the agent container's own (the runtime puts exec'd
// processes in the container's cgroup too).
type Cgroup struct {
	// Version is 2 (unified) or 1 (the memory controller's own hierarchy).
	Version int
	// File is the usage file: memory.current (v2) or memory.usage_in_bytes (v1).
	File string
}

// FindCgroup finds the memory cgroup of the process from /proc/self/cgroup and /proc/self/mountinfo.
// The mount's root matters: inside a container the runtime mounts the container's own cgroup (v1
// bind mount, or v2 with a cgroup namespace) at /sys/fs/cgroup, so the path /proc/self/cgroup shows
// is relative to the mount's root, not to the mount point. cgroup v2 is preferred; on a v1 or hybrid
// host the v1 memory controller is used. v1's usage counts page cache like v2's, but counts socket
// buffers only where the node enabled kmem TCP accounting (memory.kmem.tcp.limit_in_bytes): there,
// the budget sees the agent's heap, rings and cache, not its sockets.
func FindCgroup(p Paths) (Cgroup, error) {
	procCgroup, err := os.ReadFile(p.path("/proc/self/cgroup"))
	if err != nil {
		return Cgroup{}, fmt.Errorf("read the process's cgroups: %w", err)
	}
	mountinfo, err := os.ReadFile(p.path("/proc/self/mountinfo"))
	if err != nil {
		return Cgroup{}, fmt.Errorf("read the process's mounts: %w", err)
	}
	var v1Path, v2Path string
	haveV1, haveV2 := false, false
	for _, line := range strings.Split(string(procCgroup), "\n") {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2Path, haveV2 = parts[2], true
		case hasField(parts[1], "memory"):
			v1Path, haveV1 = parts[2], true
		}
	}
	var tried []string
	if haveV2 {
		if f, ok := findFile(p, mountinfo, v2Path, "cgroup2", "", "memory.current"); ok {
			return Cgroup{Version: 2, File: f}, nil
		}
		tried = append(tried, "cgroup v2 memory.current")
	}
	if haveV1 {
		if f, ok := findFile(p, mountinfo, v1Path, "cgroup", "memory", "memory.usage_in_bytes"); ok {
			return Cgroup{Version: 1, File: f}, nil
		}
		tried = append(tried, "cgroup v1 memory.usage_in_bytes")
	}
	if len(tried) == 0 {
		return Cgroup{}, errors.New("the process is in no memory cgroup")
	}
	return Cgroup{}, fmt.Errorf("no %s for the process's own cgroup", strings.Join(tried, " nor "))
}

// findFile looks for the usage file of cgroup path cg under a mount of fstype (with option opt, for
// v1's controller) whose root contains cg. v2 has no memory.current at the root of the hierarchy, so a
// process in no cgroup finds nothing rather than the machine's usage; v1 has one, which a process in
// a v1 root cgroup would read as its own (the agent always runs in a container's cgroup).
func findFile(p Paths, mountinfo []byte, cg, fstype, opt, file string) (string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 || g[0] != fstype || (opt != "" && !hasField(g[2], opt)) {
			continue
		}
		root, mnt := unescape(f[3]), unescape(f[4])
		rel, err := filepath.Rel(root, cg)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			// A cgroup namespace shows paths relative to its own root, which is the mount's root.
			if root != "/" {
				continue
			}
			rel = cg
		}
		name := filepath.Join(mnt, rel, file)
		if _, err := os.Stat(p.path(name)); err == nil {
			return p.path(name), true
		}
	}
	return "", false
}

func hasField(list, name string) bool {
	for _, c := range strings.Split(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// unescape undoes mountinfo's octal escapes of space, tab, newline and backslash.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Usage reads the cgroup's usage now.
func (c Cgroup) Usage() (int64, error) {
	b, err := os.ReadFile(c.File)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// Describe names the file read, for the agent's start line.
func (c Cgroup) Describe() string {
	if c.File == "" {
		return "no cgroup"
	}
	return fmt.Sprintf("cgroup v%d %s", c.Version, c.File)
}

// goMemory is the fallback usage: the Go runtime's memory mapped and not returned to the system.
func goMemory() (int64, error) {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64() - s[1].Value.Uint64()), nil
}
