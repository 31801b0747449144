// Package broker is the node-local core of MR-Enclave: topics, their ring
// buffers of recent events, subscriptions with bounded outbound queues, and
// ordered fan-out.
//
// It knows nothing of Raft, memberlist, HTTP or WebSocket. Every change to the
// replicated state (create topic, delete topic, publish) is handed to a
// Committer, which decides when the change is committed and then calls Apply
// on every node in the same order. Single-node mode uses MemoryCommitter; the
// cluster package implements Committer with Raft.
//
// Replicated state (identical on every node, changed only by Apply): topics,
// each topic's ring of the last RingSize events, its message count and last
// seq. Apply is deterministic: the committer stamps the time before the
// command is committed, Apply assigns seq = last seq + 1.
//
// Node-local state: subscriptions and their queues, drop counters, and per
// topic the highest seq already delivered on this node plus the history of
// delivered events that last_n replays come from. Deliver accepts an event
// from any path (local Apply, or a copy carried from the leader) and hands it
// to local subscribers exactly once, in seq order.
//
// Lock order: Broker.mu, then topic.mu, then Subscription.mu. No lock is held
// while calling into a Waker except Subscription.mu is never held then either:
// Wake is called with only topic.mu held, and Wakers must not call back into
// the broker synchronously.
package broker
