package broker

// eventRing keeps the last cap events, oldest first.
type eventRing struct {
	buf  []*Event
	head int // index of the oldest event
	n    int
}

func newEventRing(capacity int) eventRing {
	return eventRing{buf: make([]*Event, capacity)}
}

func (r *eventRing) push(e *Event) {
	if len(r.buf) == 0 {
		return
	}
	if r.n < len(r.buf) {
		r.buf[(r.head+r.n)%len(r.buf)] = e
		r.n++
		return
	}
	r.buf[r.head] = e
	r.head = (r.head + 1) % len(r.buf)
}

// last returns a new slice of the newest k events, oldest first.
func (r *eventRing) last(k int) []*Event {
	if k > r.n {
		k = r.n
	}
	if k <= 0 {
		return nil
	}
	out := make([]*Event, k)
	start := r.head + r.n - k
	for i := range out {
		out[i] = r.buf[(start+i)%len(r.buf)]
	}
	return out
}

func (r *eventRing) len() int { return r.n }
