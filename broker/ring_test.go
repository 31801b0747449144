package broker

import (
	"fmt"
	"testing"
)

func TestEventRing(t *testing.T) {
	seqs := func(events []*Event) []uint64 {
		out := make([]uint64, len(events))
		for i, e := range events {
			out[i] = e.Seq
		}
		return out
	}
	r := newEventRing(3)
	if got := r.last(5); got != nil || r.len() != 0 {
		t.Fatalf("empty ring: last = %v, len %d", got, r.len())
	}
	for seq := uint64(1); seq <= 7; seq++ {
		r.push(&Event{Seq: seq})
		want := []uint64{}
		for s := max(1, int(seq)-2); s <= int(seq); s++ {
			want = append(want, uint64(s))
		}
		if got := seqs(r.last(10)); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("after %d pushes: last(10) = %v, want %v", seq, got, want)
		}
	}
	if got := seqs(r.last(2)); fmt.Sprint(got) != "[6 7]" {
		t.Fatalf("last(2) = %v", got)
	}
	if got := r.last(0); got != nil {
		t.Fatalf("last(0) = %v", got)
	}
	if got := r.last(-1); got != nil {
		t.Fatalf("last(-1) = %v", got)
	}
	// last returns a copy: later pushes do not change it.
	snap := r.last(3)
	r.push(&Event{Seq: 8})
	if got := seqs(snap); fmt.Sprint(got) != "[5 6 7]" {
		t.Fatalf("snapshot changed to %v", got)
	}
	zero := newEventRing(0)
	zero.push(&Event{Seq: 1})
	if zero.len() != 0 || zero.last(1) != nil {
		t.Fatal("a zero-capacity ring kept an event")
	}
}
