package netfilter

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// A table's liveness token is an abstract unix socket, @trafficlab_<id>, that the table's holder
// binds and listens on before it creates the table and closes only after deleting it. Abstract
// sockets belong to the network namespace, like the table, and the kernel releases them the moment
// their process dies, however it dies: so a table whose token nobody listens on is a leftover, which
// no guard removed because the guard died too (an app restart kills every process in a shared PID
// namespace, an OOM kill every process of the container). Without the owner flag nothing else
// marks a table as abandoned.

// token is a held liveness token.
type token struct {
	ln *net.UnixListener
}

// tokenAddress is the abstract socket name of table inet trafficlab_<id>; Go's leading @ is the
// abstract namespace's NUL.
func tokenAddress(tableName string) string { return "@" + tableName }

// holdToken binds and listens on the token of tableName in the calling thread's network namespace.
// Go's sockets are close-on-exec, so a guard or any other child does not keep the token alive after
// its holder is gone. A token already bound means a live holder already uses the name.
func holdToken(tableName string) (*token, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tokenAddress(tableName), Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("hold the liveness token of table %q: %w", tableName, err)
	}
	t := &token{ln: ln}
	// Every sweep connects once; accepting and closing those connections keeps the backlog from
	// filling, which would make later connects fail as if the holder were gone.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return t, nil
}

func (t *token) Close() error { return t.ln.Close() }

// holderAlive reports whether the token of tableName is held by a live process of this process's
// user: the connect succeeds and SO_PEERCRED names the effective uid the sweeper runs as. A token
// held by another uid proves nothing (any process in the pod may bind the name) and counts as dead.
// Errors other than "nobody listens" keep the table: deleting a live session's redirect is worse
// than leaving a dead one for the next sweep.
func holderAlive(tableName string) (bool, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: tokenAddress(tableName), Net: "unix"})
	if errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("check the liveness token of table %q: %w", tableName, err)
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return true, fmt.Errorf("check the liveness token of table %q: %w", tableName, err)
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return true, fmt.Errorf("check the liveness token of table %q: %w", tableName, err)
	}
	if serr != nil {
		return true, fmt.Errorf("check the liveness token of table %q: SO_PEERCRED: %w", tableName, serr)
	}
	return int(cred.Uid) == os.Geteuid(), nil
}

// SweepStale deletes, in the calling thread's network namespace, every trafficlab_* table of any
// family whose holder is gone (see holderAlive), and returns the deleted tables' names. Tables of
// live holders and owned tables (the kernel deletes those with their socket) stay. The agent calls
// it when it starts and before every steal, so that a leftover of an agent killed outright on a
// kernel without the owner flag is gone by the next use at the latest.
func SweepStale() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("open nftables connection: %w", err)
	}
	var errs []error
	deleted, err := Sweep(c, func(name string) bool {
		alive, err := holderAlive(name)
		if err != nil {
			errs = append(errs, err)
		}
		return alive
	})
	return deleted, errors.Join(append(errs, err)...)
}
