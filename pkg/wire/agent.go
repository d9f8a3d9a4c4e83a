package wire

import "time"

// MaxPrivilegedIdleTimeout is the longest an agent with NET_ADMIN or NET_RAW stays in a pod after its
// last session. Such an agent is a capability that anyone allowed to exec into the pod can use (they
// can run a session in it), so it must not linger: the plugin refuses a longer --agent-idle-timeout
// (and 0, "never") for it, and the agent clamps its own --idle-timeout to this, whoever started it.
const MaxPrivilegedIdleTimeout = 10 * time.Minute
