package broker

import (
	"context"
	"sync"
	"time"
)

// Op identifies a replicated command. Values are stored in logs and
// snapshots: new ops are only ever appended.
type Op uint8

const (
	OpCreateTopic Op = 1
	OpDeleteTopic Op = 2
	OpPublish     Op = 3
)

// Message is what a client published: an id and an opaque JSON payload.
type Message struct {
	ID      string
	Payload []byte
}

// Command is one change to the replicated state.
type Command struct {
	Op    Op
	Topic string
	// TS is stamped by the committer on the node that puts the command into
	// the log, so every node applies the same time.
	TS      time.Time
	Message Message // OpPublish only
}

// Result is the outcome of applying a command. Err carries a refusal that is
// part of the deterministic state machine (ErrTopicExists, ErrTopicNotFound);
// infrastructure failures are returned separately by Pending.Wait.
type Result struct {
	Err error
	Seq uint64
	TS  time.Time
	// Epoch identifies the topic's creation (publish and create only), so
	// copies of events can be told from those of a deleted namesake.
	Epoch uint64
}

// Applier is the state machine a Committer drives: the Broker.
type Applier interface {
	Apply(cmd Command) Result
}

// Pending is a submitted command whose commit may still be under way.
type Pending interface {
	// Wait blocks until the command is applied locally or fails. The error is
	// ErrUnavailable (no quorum), ErrClosed, ctx's error, or a wrapped
	// infrastructure error; a refusal by the state machine is in Result.Err.
	Wait(ctx context.Context) (Result, error)
}

// Committer puts commands into the replicated log. Commands submitted one
// after another by the same goroutine are committed in that order, which is
// how one connection's publishes keep their order while being pipelined.
type Committer interface {
	Submit(cmd Command) Pending
}

// Done is a Pending that has already completed.
type Done struct {
	Result Result
	Err    error
}

// Wait returns the stored outcome.
func (d Done) Wait(context.Context) (Result, error) { return d.Result, d.Err }

// MemoryCommitter commits every command at once, in submission order, to the
// local Applier. It is single-node mode without durability and the committer
// the broker's tests use.
type MemoryCommitter struct {
	mu      sync.Mutex
	applier Applier
	now     func() time.Time
}

var _ Committer = (*MemoryCommitter)(nil)

// NewMemoryCommitter returns a committer applying straight to a.
func NewMemoryCommitter(a Applier) *MemoryCommitter {
	return &MemoryCommitter{applier: a, now: time.Now}
}

// Submit stamps and applies cmd before returning.
func (m *MemoryCommitter) Submit(cmd Command) Pending {
	m.mu.Lock()
	defer m.mu.Unlock()
	cmd.TS = m.now().UTC()
	return Done{Result: m.applier.Apply(cmd)}
}
