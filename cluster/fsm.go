package cluster

import (
	"fmt"
	"io"

	"github.com/hashicorp/raft"
	"github.com/mr-enclave/enclave/broker"
)

// fsm applies committed log entries to the broker on every node.
type fsm struct {
	broker *broker.Broker
	// onApplied is told each entry's results on the node that applied it;
	// the leader uses it to carry events to peers.
	onApplied func(cmds []broker.Command, results []broker.Result)
	// afterApply is told the index of every entry applied.
	afterApply func(index uint64)
	// beforeApply is a test hook.
	beforeApply func(index uint64)
}

var _ raft.FSM = (*fsm)(nil)

// Apply decodes and applies one entry. An entry that cannot be decoded
// panics: a corrupt log must stop the node, not let it diverge.
func (f *fsm) Apply(l *raft.Log) any {
	if f.beforeApply != nil {
		f.beforeApply(l.Index)
	}
	if f.afterApply != nil {
		defer f.afterApply(l.Index)
	}
	if l.Type != raft.LogCommand || len(l.Data) == 0 {
		return nil
	}
	switch entryOp(l.Data[0]) {
	case entryCommandBatch:
		cmds, err := decodeBatch(l.Data[1:])
		if err != nil {
			panic(fmt.Sprintf("cluster: undecodable log entry %d: %v", l.Index, err))
		}
		results := make([]broker.Result, len(cmds))
		for i := range cmds {
			results[i] = f.broker.Apply(cmds[i])
		}
		if f.onApplied != nil {
			f.onApplied(cmds, results)
		}
		return results
	default:
		panic(fmt.Sprintf("cluster: unknown entry op %d at index %d", l.Data[0], l.Index))
	}
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return snapshot{state: f.broker.State()}, nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	st, err := decodeState(data)
	if err != nil {
		return err
	}
	f.broker.Restore(st)
	return nil
}

type snapshot struct{ state broker.State }

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(encodeState(s.state)); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("write snapshot: %w", err)
	}
	return sink.Close()
}

func (snapshot) Release() {}
