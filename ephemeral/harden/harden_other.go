//go:build !linux

package harden

import "errors"

var errNotLinux = errors.New("the agent runs on linux only")

func setNonDumpable() error { return errNotLinux }

// Dumpable reports whether this process may be dumped.
func Dumpable() (bool, error) { return true, errNotLinux }
