// Package exitcode carries the exit code of a command the plugin ran for the user (steal -- COMMAND)
// up to main, which exits with it, as kubectl exec does. It is its own type, not client-go's
// CodeExitError, because that one also reports the agent's own exit through a remote exec stream,
// which is a failure of the plugin and must be printed.
package exitcode

import "fmt"

// Error is a user's command that exited with Code.
type Error struct {
	Command string
	Code    int
}

func (e *Error) Error() string { return fmt.Sprintf("%q exited with code %d", e.Command, e.Code) }
