package wire

// The agent container's memory budget (ephemeral/budget): what the agent's processes may use
// together, read from the container's own memory cgroup, before the agent gives up what is its own to
// give (mirror copies, the pace of stolen streams). The plugin's --agent-memory-budget sets it and
// the agent container's environment (AgentMemoryBudgetEnv) carries it, in bytes.
const (
	// DefaultAgentMemoryBudget: the agent's baseline, with a sniff mirror running, is about 60 MiB on
	// the local cluster (~10 MiB for the main process, ~25 MiB for a session process, 16 MiB of
	// capture rings, lo and eth0 at 8 MiB each, and the binary's pages). 128 MiB leaves about the
	// mirror's own queue bound (64 MiB) for copies in flight, and stays a small share of the 256
	// MiB-and-up limits of pods that carry HTTP traffic.
	DefaultAgentMemoryBudget = 128 << 20
	// MinAgentMemoryBudget refuses budgets the agent fills by itself: its peak RSS while mirroring
	// 5,000 requests/s was 47-63 MiB (docs/performance.md), so a smaller budget would be exceeded
	// from the start, every copy dropped and every stolen stream paused.
	MinAgentMemoryBudget = 64 << 20
	// AgentMemoryBudgetEnv carries the budget in the agent container's environment rather than its
	// main process's flags: every process of the container reads it, the exec'd ones too (a runtime
	// gives them the container's environment, not the main process's arguments).
	AgentMemoryBudgetEnv = "TRAFFICLAB_MEMORY_BUDGET"
)
