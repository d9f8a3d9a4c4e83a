package budget

import (
	"fmt"
	"log/slog"
	"strconv"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// LimitFromEnv reads the budget the plugin set in the agent container's environment
// (wire.AgentMemoryBudgetEnv, bytes); unset is DefaultLimit.
func LimitFromEnv(getenv func(string) string) (int64, error) {
	s := getenv(wire.AgentMemoryBudgetEnv)
	if s == "" {
		return DefaultLimit, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s=%q is not a number of bytes", wire.AgentMemoryBudgetEnv, s)
	}
	return n, nil
}

// FromEnv is the budget of an agent process: the limit from the container's environment, the usage
// from the container's memory cgroup, and a log line each time it goes over and back under.
func FromEnv(getenv func(string) string, log *slog.Logger) (*Budget, error) {
	limit, err := LimitFromEnv(getenv)
	if err != nil {
		return nil, err
	}
	return New(limit, Options{OnChange: LogChanges(log)})
}

// LogChanges is an Options.OnChange that logs when the agent goes over its budget and back under.
func LogChanges(log *slog.Logger) func(over bool, used, limit int64) {
	return func(over bool, used, limit int64) {
		if over {
			log.Warn("over the memory budget: mirror copies are dropped, stolen streams wait", "used", used, "limit", limit)
			return
		}
		log.Info("back under the memory budget", "used", used, "limit", limit)
	}
}
