package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
)

// procEnv observes the pod through /proc. The agent shares the target's PID namespace
// (targetContainerName), so /proc shows the target's processes and every exec'd session.
func procEnv() env {
	return env{sessions: func() int { return countSessions("/proc") }, alive: procAlive("/proc")}
}

// countSessions counts processes whose command line is `.../trafficlab-agent attach ...`.
func countSessions(proc string) int {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(proc, e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := bytes.Split(cmdline, []byte{0})
		if len(args) >= 2 && filepath.Base(string(args[0])) == "trafficlab-agent" && string(args[1]) == "attach" {
			n++
		}
	}
	return n
}

// procAlive remembers the process's start time, so a recycled PID does not count as the same process.
func procAlive(proc string) func(pid int) func() bool {
	return func(pid int) func() bool {
		start := startTime(proc, pid)
		return func() bool {
			s := startTime(proc, pid)
			return s != "" && s == start
		}
	}
}

// startTime is field 22 of /proc/PID/stat, counted after the parenthesised command name, which may
// itself contain spaces and parentheses.
func startTime(proc string, pid int) string {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ""
	}
	fields := bytes.Fields(b[i+1:])
	if len(fields) < 20 {
		return ""
	}
	return string(fields[19])
}
