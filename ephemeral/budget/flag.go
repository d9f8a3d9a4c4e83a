package budget

import (
	"fmt"
	"log/slog"
	"strconv"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Flag is the agent's --memory-budget (wire.AgentMemoryBudgetFlag): bytes, as the plugin writes them
// from its --agent-memory-budget. Register it with flag.FlagSet.Var; its zero value is DefaultLimit.
type Flag int64

// FlagName is the flag's name, for flag.FlagSet.Var.
const FlagName = wire.AgentMemoryBudgetFlag

// FlagUsage is the flag's usage line.
const FlagUsage = "the agent container's memory budget in bytes; past it, mirror copies are dropped and stolen streams wait"

// Limit is the budget the flag sets.
func (f Flag) Limit() int64 {
	if f == 0 {
		return DefaultLimit
	}
	return int64(f)
}

func (f Flag) String() string { return strconv.FormatInt(f.Limit(), 10) }

// Set parses a number of bytes of at least MinLimit.
func (f *Flag) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("not a number of bytes: %q", s)
	}
	if n < MinLimit {
		return fmt.Errorf("%q is below the agent's own baseline of %d bytes", s, int64(MinLimit))
	}
	*f = Flag(n)
	return nil
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
