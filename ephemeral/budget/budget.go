// Package budget is the agent container's memory budget, shared by its processes: a limit checked
// against the container's own memory cgroup (which counts every agent process, their socket buffers
// and capture rings, whoever allocated them) plus what this process has reserved for bytes it is
// about to hold. Past the limit the agent gives up what is its own to give (mirror copies, the pace
// of stolen streams), never the app's traffic: the pod's memory limit is shared with the app, and an
// OOM in the pod's cgroup may pick the app.
package budget

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// DefaultLimit is the agent container's budget when the plugin sets none (wire says why this much).
const DefaultLimit = wire.DefaultAgentMemoryBudget

// MinLimit refuses budgets below the agent's own baseline.
const MinLimit = wire.MinAgentMemoryBudget

// refreshEvery bounds how stale the cgroup reading may be: the hot path (a chunk of a copy) reads
// a cached value, and at most one caller per interval pays for the file read (a few microseconds).
const refreshEvery = 100 * time.Millisecond

// Usage reads the bytes the agent container uses now.
type Usage func() (int64, error)

// Budget is one process's view of the container's budget. A nil *Budget has no limit: Reserve always
// succeeds and Over is always false, so packages can take one optionally.
type Budget struct {
	limit  int64
	usage  Usage
	source string
	now    func() time.Time

	reserved  atomic.Int64
	used      atomic.Int64 // the last cgroup reading
	readAt    atomic.Int64 // when it was taken, UnixNano; 0: never
	refreshMu sync.Mutex

	refused atomic.Int64
	over    atomic.Bool // the last check found the budget exceeded, for the transition log
	onOver  func(over bool, used, limit int64)
}

// Options are the optional parts of New.
type Options struct {
	// Usage replaces the cgroup reading (tests; a process with no cgroup of its own).
	Usage Usage
	// Source names what Usage reads, for the start line.
	Source string
	// OnChange is told when the budget becomes exceeded and when it is no longer; it must not block.
	OnChange func(over bool, used, limit int64)
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// New returns the budget of limit bytes, read from the process's own memory cgroup unless
// opts.Usage says otherwise.
func New(limit int64, opts Options) (*Budget, error) {
	if limit < MinLimit {
		return nil, fmt.Errorf("memory budget %d bytes is below the agent's own baseline of %d", limit, int64(MinLimit))
	}
	b := &Budget{limit: limit, usage: opts.Usage, source: opts.Source, now: opts.Now, onOver: opts.OnChange}
	if b.now == nil {
		b.now = time.Now
	}
	if b.usage == nil {
		cg, err := FindCgroup(HostPaths())
		b.usage, b.source = cg.Usage, cg.Describe()
		if err != nil {
			// Without a cgroup of its own, the process counts its own Go memory: the other agent
			// processes and the kernel's buffers are then invisible, and the start line says so.
			b.usage, b.source = goMemory, fmt.Sprintf("this process's Go memory only (%v)", err)
		}
	}
	return b, nil
}

// Limit is the budget in bytes.
func (b *Budget) Limit() int64 {
	if b == nil {
		return 0
	}
	return b.limit
}

// Source says what the usage is read from.
func (b *Budget) Source() string {
	if b == nil {
		return "no budget"
	}
	return b.source
}

// Reserve takes n bytes the caller is about to hold; false means they do not fit and the caller must
// not hold them (and must not Release them). Refusals are counted.
func (b *Budget) Reserve(n int) bool {
	if b == nil || n <= 0 {
		return true
	}
	r := b.reserved.Add(int64(n))
	// Bytes already allocated are in the cgroup's count too until they are released: the double
	// count errs on the side of the pod.
	if b.refresh()+r > b.limit {
		b.reserved.Add(-int64(n))
		b.refused.Add(1)
		return false
	}
	return true
}

// Release gives back n reserved bytes.
func (b *Budget) Release(n int) {
	if b == nil || n <= 0 {
		return
	}
	b.reserved.Add(-int64(n))
}

// Over reports whether the container uses more than its budget, with this process's reservations.
func (b *Budget) Over() bool {
	if b == nil {
		return false
	}
	return b.refresh()+b.reserved.Load() > b.limit
}

// Reserved is what this process holds reserved now.
func (b *Budget) Reserved() int64 {
	if b == nil {
		return 0
	}
	return b.reserved.Load()
}

// Refused counts the reservations refused so far.
func (b *Budget) Refused() int64 {
	if b == nil {
		return 0
	}
	return b.refused.Load()
}

// WaitUnder returns once the budget is not exceeded, or when ctx ends (its error). It polls at the
// refresh interval: the cgroup has no cheap notification for going back under a threshold.
func (b *Budget) WaitUnder(ctx context.Context) error {
	if !b.Over() {
		return nil
	}
	t := time.NewTicker(refreshEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if !b.Over() {
				return nil
			}
		}
	}
}

// refresh returns the cgroup's usage, read again if the cached value is older than refreshEvery. One
// caller reads; the others use the cached value meanwhile.
func (b *Budget) refresh() int64 {
	now := b.now().UnixNano()
	last := b.readAt.Load()
	if last != 0 && now-last < int64(refreshEvery) {
		return b.used.Load()
	}
	if !b.refreshMu.TryLock() {
		return b.used.Load()
	}
	defer b.refreshMu.Unlock()
	if v, err := b.usage(); err == nil {
		b.used.Store(v)
	}
	b.readAt.Store(now)
	used := b.used.Load()
	over := used+b.reserved.Load() > b.limit
	if b.over.Swap(over) != over && b.onOver != nil {
		b.onOver(over, used, b.limit)
	}
	return used
}

// Account is one user's share of a Budget (a mirror): Close gives back at once whatever it still
// holds, so that parts that never saw their end (a connection the capture stopped in the middle of)
// leave nothing reserved in a budget that outlives them. A nil *Account has no limit.
type Account struct {
	b      *Budget
	mu     sync.Mutex
	held   int64
	closed bool
}

// Account opens an account; a nil Budget gives a nil Account.
func (b *Budget) Account() *Account {
	if b == nil {
		return nil
	}
	return &Account{b: b}
}

// Reserve is the Budget's Reserve, counted in the account; a closed account refuses everything.
func (a *Account) Reserve(n int) bool {
	if a == nil || n <= 0 {
		return true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || !a.b.Reserve(n) {
		return false
	}
	a.held += int64(n)
	return true
}

// Release gives back n bytes, never more than the account holds (after Close, nothing).
func (a *Account) Release(n int) {
	if a == nil || n <= 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	m := min(int64(n), a.held)
	a.held -= m
	a.b.Release(int(m))
}

// Held is what the account holds now.
func (a *Account) Held() int64 {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held
}

// Close gives back everything the account holds and refuses further reservations.
func (a *Account) Close() {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.b.Release(int(a.held))
	a.held, a.closed = 0, true
}
