//go:build !linux

package exec

import (
	"context"
	"errors"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
)

func (o *Options) runSandboxed(context.Context, *session.Session, *session.Follower) (int, error) {
	return 0, errors.New("a network namespace for the command needs Linux; use --proxy")
}
