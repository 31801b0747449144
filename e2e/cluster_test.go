//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

// ringSize is RING_SIZE in e2e/compose.e2e.yml: replaying it gives every
// message of a topic as long as fewer were published.
const ringSize = 50000

// TestCluster runs the scenario in order, on one cluster; a step that fails
// stops the run (the later ones build on it).
func TestCluster(t *testing.T) {
	c := startCluster(t)
	steps := []struct {
		name string
		f    func(*testing.T, *cluster)
	}{
		{"Image", testImage},
		{"Formation", testFormation},
		{"CrossNodeDelivery", testCrossNodeDelivery},
		{"TopicAdminThroughEveryNode", testTopicAdmin},
		{"LeaderKilledUnderLoad", testLeaderKilled},
		{"NodeCutOff", testNodeCutOff},
		{"NodeRecreatedWithNewIP", testNewIP},
		{"FinalConvergence", testFinalConvergence},
	}
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) { s.f(t, c) }) {
			t.Fatalf("%s failed: stopping here (the later steps build on it)", s.name)
		}
	}
}

func others(exclude ...string) []string {
	var out []string
	for _, n := range nodes {
		if !slices.Contains(exclude, n) {
			out = append(out, n)
		}
	}
	return out
}

// agreedLeader waits until every node in ask reports the same leader, one of
// ask, with every node of want an alive voter.
func (c *cluster) agreedLeader(t testing.TB, ask, want []string, timeout time.Duration) (string, time.Duration) {
	t.Helper()
	var leader string
	took := waitFor(t, timeout, 100*time.Millisecond, fmt.Sprintf("%v agree on a leader among themselves", ask), func() (bool, string) {
		var seen []string
		leader = ""
		ok := true
		for _, n := range ask {
			s, err := c.status(n)
			if err != nil {
				seen = append(seen, n+": "+err.Error())
				ok = false
				continue
			}
			seen = append(seen, s.String())
			if !slices.Contains(ask, s.LeaderID) || (leader != "" && s.LeaderID != leader) {
				ok = false
			}
			for _, id := range want {
				if _, st, voter, found := s.member(id); !found || st != "alive" || !voter {
					ok = false
				}
			}
			leader = s.LeaderID
		}
		return ok, strings.Join(seen, "; ")
	})
	return leader, took
}

func (c *cluster) createTopic(t testing.TB, node, topic string) {
	t.Helper()
	r := c.do("POST", node, "/topics", map[string]string{"name": topic})
	if r.err != nil || r.status != 201 {
		t.Fatalf("POST /topics %s on %s: want 201, got %s", topic, node, r)
	}
	var body map[string]string
	if err := json.Unmarshal(r.body, &body); err != nil || !reflect.DeepEqual(body, map[string]string{"status": "created", "topic": topic}) {
		t.Fatalf("POST /topics on %s: body %s", node, r.body)
	}
	c.waitListed(t, topic, true)
}

// waitListed waits until every running node lists topic (or, with
// want=false, none does).
func (c *cluster) waitListed(t testing.TB, topic string, want bool) {
	t.Helper()
	waitFor(t, 15*time.Second, 50*time.Millisecond, fmt.Sprintf("topic %s listed=%v on every node", topic, want), func() (bool, string) {
		var seen []string
		ok := true
		for _, n := range nodes {
			names, err := c.topics(n)
			if err != nil {
				return false, err.Error()
			}
			if slices.Contains(names, topic) != want {
				ok = false
			}
			seen = append(seen, fmt.Sprintf("%s:%v", n, names))
		}
		return ok, strings.Join(seen, " ")
	})
}

func sameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond)) }

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

// ---------------------------------------------------------------------------

func testImage(t *testing.T, c *cluster) {
	var img struct {
		Config struct {
			User        string
			Healthcheck struct{ Test []string }
			Entrypoint  []string
		}
		Size int64
	}
	out := mustDocker(t, 30*time.Second, "image", "inspect", "-f", "{{json .}}", c.image)
	if err := json.Unmarshal([]byte(out), &img); err != nil {
		t.Fatal(err)
	}
	if img.Config.User != "65532:65532" {
		t.Errorf("image user %q, want 65532:65532 (non-root)", img.Config.User)
	}
	if got := strings.Join(img.Config.Healthcheck.Test, " "); got != "CMD /enclave healthcheck" {
		t.Errorf("image HEALTHCHECK %q, want CMD /enclave healthcheck", got)
	}
	if img.Size > 40<<20 {
		t.Errorf("image is %d MB; a static binary on scratch should be far smaller", img.Size>>20)
	}
	for _, n := range nodes {
		user := mustDocker(t, 30*time.Second, "inspect", "-f", "{{.Config.User}}", c.container(t, n))
		if user != "65532:65532" {
			t.Errorf("%s runs as %q", n, user)
		}
	}
}

func testFormation(t *testing.T, c *cluster) {
	leader, _ := c.agreedLeader(t, nodes, nodes, 90*time.Second)
	took := time.Since(c.upAt)
	c.m.note("cluster formed (3 alive voters, one leader: %s) %s after compose up was started", leader, secs(took))
	c.m.set("formation", secs(took))
	// The image's HEALTHCHECK (enclave healthcheck, no shell) must pass.
	healthy := waitFor(t, 90*time.Second, time.Second, "docker reports every node healthy", func() (bool, string) {
		var seen []string
		ok := true
		for _, n := range nodes {
			st, err := docker(30*time.Second, "inspect", "-f", "{{.State.Health.Status}}", c.container(t, n))
			st = strings.TrimSpace(st)
			if err != nil || st != "healthy" {
				ok = false
			}
			seen = append(seen, n+":"+st)
		}
		return ok, strings.Join(seen, " ")
	})
	c.m.note("docker HEALTHCHECK healthy on all nodes after %s more", secs(healthy))
}

func testCrossNodeDelivery(t *testing.T, c *cluster) {
	const topic = "orders"
	c.createTopic(t, "node-1", topic)
	subs := map[string]*wsClient{}
	for _, n := range nodes {
		w, err := c.dial(n)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if err := w.subscribe(topic, "s-"+n, 0); err != nil {
			t.Fatal(err)
		}
		subs[n] = w
	}
	pub, err := c.dial("node-3")
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	// The README's walkthrough: subscribed on node 2, published on node 3.
	id := uuid.NewString()
	payload := json.RawMessage(`{"order_id":123,"status":"created"}`)
	sent := time.Now()
	f, err := pub.publish(topic, id, payload, 20*time.Second)
	if err != nil || f.Type != "ack" || f.Status != "ok" || f.Topic != topic {
		t.Fatalf("publish on node-3: %+v %v", f, err)
	}
	ackLatency := time.Since(sent)
	for _, n := range []string{"node-2", "node-1", "node-3"} {
		ev, err := subs[n].nextEvent(10 * time.Second)
		if err != nil {
			t.Fatalf("subscriber on %s: %v", n, err)
		}
		if ev.Topic != topic || ev.Message == nil || ev.Message.ID != id || !sameJSON(ev.Message.Payload, payload) || ev.Seq != 1 || ev.TS == "" {
			t.Fatalf("subscriber on %s got %+v (message %+v), want message %s seq 1", n, ev, ev.Message, id)
		}
		if n == "node-2" {
			c.m.note("node-3 → node-2 event: ack %s, event %s after the publish", ms(ackLatency), ms(ev.at.Sub(sent)))
		}
	}

	// Every node publishes at once; every subscriber sees all of it, in one
	// order, each publisher's messages in the order sent.
	const perNode = 40
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	var latMu sync.Mutex
	var lats []time.Duration
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := c.dial(n)
			if err != nil {
				errs <- err
				return
			}
			defer w.Close()
			for i := 0; i < perNode; i++ {
				start := time.Now()
				f, err := w.publish(topic, uuid.NewString(), map[string]any{"from": n, "n": i}, 20*time.Second)
				if err != nil || f.Type != "ack" {
					errs <- fmt.Errorf("publish %d on %s: %+v %v", i, n, f, err)
					return
				}
				latMu.Lock()
				lats = append(lats, time.Since(start))
				latMu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var orders [][]string
	for _, n := range nodes {
		var ids []string
		last := map[string]int{}
		for i := 0; i < perNode*len(nodes); i++ {
			ev, err := subs[n].nextEvent(10 * time.Second)
			if err != nil {
				t.Fatalf("subscriber on %s after %d of %d events: %v", n, i, perNode*len(nodes), err)
			}
			if ev.Seq != uint64(i+2) {
				t.Fatalf("subscriber on %s: event %d has seq %d, want %d", n, i, ev.Seq, i+2)
			}
			var p struct {
				From string `json:"from"`
				N    int    `json:"n"`
			}
			_ = json.Unmarshal(ev.Message.Payload, &p)
			if prev, ok := last[p.From]; ok && p.N <= prev {
				t.Fatalf("subscriber on %s: %s's message %d after its message %d", n, p.From, p.N, prev)
			}
			last[p.From] = p.N
			ids = append(ids, ev.Message.ID)
		}
		orders = append(orders, ids)
	}
	for i := 1; i < len(orders); i++ {
		if !slices.Equal(orders[0], orders[i]) {
			t.Fatalf("subscribers on %s and %s saw different orders", nodes[0], nodes[i])
		}
	}
	c.m.note("cross-node: %d publishes from 3 nodes at once, ack p50 %s p99 %s; all 3 subscribers got all %d in one order",
		len(lats), ms(percentile(lats, 0.5)), ms(percentile(lats, 0.99)), len(lats)+1)
}

func testTopicAdmin(t *testing.T, c *cluster) {
	for i, n := range nodes {
		topic := fmt.Sprintf("admin-%d", i+1)
		next, third := nodes[(i+1)%3], nodes[(i+2)%3]
		c.createTopic(t, n, topic) // waits until every node lists it

		r := c.do("POST", next, "/topics", map[string]string{"name": topic})
		if r.status != 409 || r.code() != "TOPIC_EXISTS" {
			t.Fatalf("POST /topics %s again on %s: want 409 TOPIC_EXISTS, got %s", topic, next, r)
		}
		sub, err := c.dial(third)
		if err != nil {
			t.Fatal(err)
		}
		if err := sub.subscribe(topic, "admin", 0); err != nil {
			t.Fatal(err)
		}
		r = c.do("DELETE", next, "/topics/"+topic, nil)
		if r.status != 200 || !sameJSON(r.body, []byte(fmt.Sprintf(`{"status":"deleted","topic":%q}`, topic))) {
			t.Fatalf("DELETE /topics/%s on %s: want 200, got %s", topic, next, r)
		}
		select {
		case f := <-sub.infos:
			if f.Msg != "topic_deleted" || f.Topic != topic {
				t.Fatalf("subscriber on %s got info %+v, want topic_deleted", third, f)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("subscriber on %s got no topic_deleted for %s (deleted through %s)", third, topic, next)
		}
		sub.Close()
		c.waitListed(t, topic, false)
		r = c.do("DELETE", third, "/topics/"+topic, nil)
		if r.status != 404 || r.code() != "TOPIC_NOT_FOUND" {
			t.Fatalf("DELETE /topics/%s again on %s: want 404 TOPIC_NOT_FOUND, got %s", topic, third, r)
		}
		w, err := c.dial(n)
		if err != nil {
			t.Fatal(err)
		}
		f, err := w.publish(topic, uuid.NewString(), 1, 20*time.Second)
		w.Close()
		if err != nil || f.code() != "TOPIC_NOT_FOUND" {
			t.Fatalf("publish to deleted %s on %s: want TOPIC_NOT_FOUND, got %+v %v", topic, n, f, err)
		}
	}
	for _, n := range nodes {
		r := c.do("GET", n, "/health", nil)
		var h map[string]any
		if r.status != 200 || json.Unmarshal(r.body, &h) != nil || len(h) != 3 || h["uptime_sec"] == nil || h["topics"] == nil || h["subscribers"] == nil {
			t.Fatalf("GET /health on %s: %s", n, r)
		}
	}
	c.m.note("topic admin: created on each node, 409 on the next, deleted through the next (subscriber on the third told), 404 after, on all 3")
}

// pubOutcome is one publish of a continuous publisher.
type pubOutcome struct {
	node       string
	n          int
	id         string
	sent, done time.Time
	acked      bool
	code       string // error code when refused
	err        string // transport error or no reply
	noReply    bool
}

// publishContinuously publishes one message at a time on node until stop is
// closed (at most max messages, one every gap at most), redialling a broken
// connection, and returns every outcome.
func (c *cluster) publishContinuously(node, topic string, gap time.Duration, max int, stop <-chan struct{}, progress func(pubOutcome)) []pubOutcome {
	var out []pubOutcome
	var w *wsClient
	defer func() {
		if w != nil {
			w.Close()
		}
	}()
	redials := 0
	for i := 0; i < max; i++ {
		select {
		case <-stop:
			return out
		default:
		}
		if w == nil {
			var err error
			if w, err = c.dial(node); err != nil {
				out = append(out, pubOutcome{node: node, n: i, sent: time.Now(), done: time.Now(), err: err.Error()})
				if redials++; redials > 20 {
					return out
				}
				time.Sleep(500 * time.Millisecond)
				continue
			}
		}
		o := pubOutcome{node: node, n: i, id: uuid.NewString(), sent: time.Now()}
		rid, ch, err := w.send(publishReq(topic, o.id, map[string]any{"from": node, "n": i}))
		var f frame
		if err == nil {
			f, err = w.wait(rid, ch, 20*time.Second)
			if err != nil && strings.HasPrefix(err.Error(), "no reply") {
				o.noReply = true
				// A reply may still come: look once more before moving on.
				time.Sleep(2 * time.Second)
				if late, ok := w.lateReply(rid); ok {
					f, err = late, nil
					o.err = "late reply"
				}
			}
		}
		o.done = time.Now()
		switch {
		case err != nil:
			o.err = err.Error()
			w.Close()
			w = nil
		case f.Type == "ack":
			o.acked = true
		default:
			o.code = f.code()
		}
		out = append(out, o)
		if progress != nil {
			progress(o)
		}
		if !o.acked {
			time.Sleep(50 * time.Millisecond)
		} else if d := gap - time.Since(o.sent); d > 0 {
			time.Sleep(d)
		}
	}
	return out
}

// replay subscribes on node with last_n = total and returns the ids of the
// topic's messages in seq order, checking seq runs 1..total with no gap.
func (c *cluster) replay(t testing.TB, node, topic string, total int) []string {
	t.Helper()
	if total > ringSize {
		t.Fatalf("%d messages in %s: more than RING_SIZE %d, so a replay cannot show them all", total, topic, ringSize)
	}
	w, err := c.dial(node)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.subscribe(topic, "replay", total); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 0, total)
	deadline := time.Now().Add(60 * time.Second)
	for len(ids) < total {
		ev, err := w.nextEvent(time.Until(deadline))
		if err != nil {
			t.Fatalf("replay of %s on %s: %d of %d events: %v", topic, node, len(ids), total, err)
		}
		if ev.Seq != uint64(len(ids)+1) {
			t.Fatalf("replay of %s on %s: event %d has seq %d", topic, node, len(ids)+1, ev.Seq)
		}
		ids = append(ids, ev.Message.ID)
	}
	return ids
}

// converged waits until every node has the same message count for topic,
// and returns it.
func (c *cluster) converged(t testing.TB, topic string, on []string, timeout time.Duration) (int, time.Duration) {
	t.Helper()
	var total uint64
	took := waitFor(t, timeout, 100*time.Millisecond, fmt.Sprintf("%v agree on the message count of %s", on, topic), func() (bool, string) {
		var seen []string
		var counts []uint64
		for _, n := range on {
			m, err := c.messages(n, topic)
			if err != nil {
				return false, err.Error()
			}
			counts = append(counts, m)
			seen = append(seen, fmt.Sprintf("%s:%d", n, m))
		}
		total = counts[0]
		for _, m := range counts {
			if m != total {
				return false, strings.Join(seen, " ")
			}
		}
		return true, ""
	})
	return int(total), took
}

// checkRings replays topic on every node in on: the same ids in the same
// order everywhere, no duplicate. It returns the ids.
func (c *cluster) checkRings(t testing.TB, topic string, on []string, total int) []string {
	t.Helper()
	var first []string
	for i, n := range on {
		ids := c.replay(t, n, topic, total)
		if i == 0 {
			first = ids
			seen := map[string]bool{}
			for _, id := range ids {
				if seen[id] {
					t.Fatalf("%s on %s: message %s committed twice", topic, n, id)
				}
				seen[id] = true
			}
			continue
		}
		if !slices.Equal(first, ids) {
			at := 0
			for at < len(ids) && ids[at] == first[at] {
				at++
			}
			t.Fatalf("%s: %s and %s differ from seq %d on", topic, on[0], n, at+1)
		}
	}
	return first
}

// summarize checks outcomes against the committed ids: every acked message
// is there (else lost), each publisher's acked messages are in the order
// sent. It returns acked, lost, refused (by code) and how many refused ones
// were committed all the same.
func summarize(t testing.TB, outcomes []pubOutcome, committed []string) (acked, lost int, refused map[string]int, refusedCommitted int) {
	t.Helper()
	pos := make(map[string]int, len(committed))
	for i, id := range committed {
		pos[id] = i
	}
	refused = map[string]int{}
	lastPos := map[string]int{}
	var lostIDs []string
	for _, o := range outcomes {
		switch {
		case o.acked:
			acked++
			p, ok := pos[o.id]
			if !ok {
				lost++
				lostIDs = append(lostIDs, fmt.Sprintf("%s#%d(%s)", o.node, o.n, o.id))
				continue
			}
			if prev, ok := lastPos[o.node]; ok && p < prev {
				t.Errorf("%s's message #%d was committed before an earlier acked message of the same connection", o.node, o.n)
			}
			lastPos[o.node] = p
		case o.code != "":
			refused[o.code]++
			if _, ok := pos[o.id]; ok {
				refusedCommitted++
			}
		default:
			refused["transport:"+o.err]++
			if _, ok := pos[o.id]; ok && o.id != "" {
				refusedCommitted++
			}
		}
	}
	if lost > 0 {
		t.Errorf("LOST %d acked messages: %v", lost, lostIDs[:min(len(lostIDs), 20)])
	}
	return
}

func testLeaderKilled(t *testing.T, c *cluster) {
	const topic = "failover"
	leader, _ := c.agreedLeader(t, nodes, nodes, 30*time.Second)
	survivors := others(leader)
	c.createTopic(t, survivors[0], topic)
	leaderCID := c.container(t, leader)

	// Live subscribers on the survivors.
	subs := map[string]*wsClient{}
	for _, n := range survivors {
		w, err := c.dial(n)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if err := w.subscribe(topic, "live", 0); err != nil {
			t.Fatal(err)
		}
		subs[n] = w
	}

	// One publisher on each survivor, one message at a time (at most one
	// every 2 ms), forwarded to the leader.
	stop := make(chan struct{})
	var mu sync.Mutex
	var killedAt, leaderAt time.Time
	ackedBefore := map[string]int{}
	ackedOnNewLeader := map[string]int{}
	results := make([][]pubOutcome, len(survivors))
	var wg sync.WaitGroup
	for i, n := range survivors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.publishContinuously(n, topic, 2*time.Millisecond, 40000, stop, func(o pubOutcome) {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case !o.acked:
				case killedAt.IsZero():
					ackedBefore[n]++
				case !leaderAt.IsZero() && o.sent.After(leaderAt):
					ackedOnNewLeader[n]++
				}
			})
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	waitFor(t, 30*time.Second, 50*time.Millisecond, "both publishers acked 200 messages before the kill", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return ackedBefore[survivors[0]] >= 200 && ackedBefore[survivors[1]] >= 200, fmt.Sprint(ackedBefore)
	})
	mu.Lock()
	killedAt = time.Now()
	mu.Unlock()
	mustDocker(t, time.Minute, "kill", leaderCID)
	t.Logf("killed the leader %s under load", leader)

	newLeader, _ := c.agreedLeader(t, survivors, survivors, 30*time.Second)
	mu.Lock()
	leaderAt = time.Now()
	mu.Unlock()
	election := leaderAt.Sub(killedAt)
	waitFor(t, 45*time.Second, 20*time.Millisecond, "both survivors' publishers acked 200 messages sent after the new leader was seen", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return ackedOnNewLeader[survivors[0]] >= 200 && ackedOnNewLeader[survivors[1]] >= 200, fmt.Sprint(ackedOnNewLeader)
	})
	close(stop)
	wg.Wait()

	// The unavailability window each publisher saw: its longest stretch
	// without an ack (last ack before the outage → first ack after it).
	var all []pubOutcome
	var windows []string
	var worst, resumed time.Duration
	for i, n := range survivors {
		all = append(all, results[i]...)
		var gap time.Duration
		var gapEnd time.Time
		var prev time.Time
		for _, o := range results[i] {
			if !o.acked {
				continue
			}
			if !prev.IsZero() && o.done.Sub(prev) > gap {
				gap, gapEnd = o.done.Sub(prev), o.done
			}
			prev = o.done
		}
		worst = max(worst, gap)
		resumed = max(resumed, gapEnd.Sub(killedAt))
		windows = append(windows, fmt.Sprintf("%s %s", n, secs(gap)))
	}

	// The killed node comes back and catches up.
	restartedAt := time.Now()
	mustDocker(t, time.Minute, "start", leaderCID)
	_, rejoin := c.agreedLeader(t, nodes, nodes, 60*time.Second)
	total, _ := c.converged(t, topic, nodes, 60*time.Second)
	catchup := time.Since(restartedAt)
	t.Logf("%s restarted: back in the cluster after %s, caught up (%d messages) after %s", leader, secs(rejoin), total, secs(catchup))

	committed := c.checkRings(t, topic, nodes, total)
	acked, lost, refused, refusedCommitted := summarize(t, all, committed)
	for _, o := range all {
		if o.noReply {
			t.Errorf("publish %s#%d got no reply within 20 s (%s)", o.node, o.n, o.err)
		}
	}
	for code := range refused {
		if code != "UNAVAILABLE" {
			t.Errorf("publishes refused with %s during the failover (%d); only UNAVAILABLE is expected", code, refused[code])
		}
	}

	// The live subscribers saw the commit order, with no gap or duplicate.
	for _, n := range survivors {
		var got []string
		deadline := time.Now().Add(30 * time.Second)
		for len(got) < total && time.Now().Before(deadline) {
			ev, err := subs[n].nextEvent(time.Until(deadline))
			if err != nil {
				break
			}
			if ev.Seq != uint64(len(got)+1) {
				t.Errorf("live subscriber on %s: seq %d after %d events (gap or duplicate)", n, ev.Seq, len(got))
				break
			}
			got = append(got, ev.Message.ID)
		}
		if !slices.Equal(got, committed[:len(got)]) || len(got) != total {
			t.Errorf("live subscriber on %s got %d of %d events in commit order", n, len(got), total)
		}
	}

	c.m.note("leader kill: killed %s under continuous publishing; survivors agreed on the new leader %s %s after the kill; unavailability window (longest time without an ack, per publisher) %s; publishing resumed on both %s after the kill",
		leader, newLeader, secs(election), strings.Join(windows, ", "), secs(resumed))
	var refusals []string
	for _, o := range all {
		if !o.acked {
			refusals = append(refusals, fmt.Sprintf("%s#%d sent %s after the kill, answered %s %s later", o.node, o.n, secs(o.sent.Sub(killedAt)), o.code+o.err, secs(o.done.Sub(o.sent))))
		}
	}
	c.m.note("leader kill: %d publishes, %d acked, %d lost, refused %v (%d of the refused committed all the same), %d committed in all; restarted node rejoined %s, caught up %s after docker start",
		len(all), acked, lost, refused, refusedCommitted, total, secs(rejoin), secs(catchup))
	if len(refusals) > 0 {
		c.m.note("leader kill: refused publishes: %s", strings.Join(refusals[:min(len(refusals), 10)], "; "))
	}
	c.m.set("failover_window", secs(worst))
	c.m.set("election", secs(election))
	c.m.set("acked", fmt.Sprint(acked))
	c.m.set("lost", fmt.Sprint(lost))
	c.m.set("refused", fmt.Sprint(len(all)-acked))
	c.m.set("restart_catchup", secs(catchup))
}

func testNodeCutOff(t *testing.T, c *cluster) {
	const topic = "partition"
	cut, _ := c.agreedLeader(t, nodes, nodes, 30*time.Second)
	majority := others(cut)
	c.createTopic(t, majority[0], topic)
	cid := c.container(t, cut)
	oldIP := c.ipOf(t, cut)

	// Move the leader off the cluster network. Its host port follows it to
	// the side network, so it stays reachable from here.
	mustDocker(t, time.Minute, "network", "connect", c.sideNet, cid)
	cutAt := time.Now()
	mustDocker(t, time.Minute, "network", "disconnect", c.clusterNet, cid)
	healed := false
	defer func() {
		if !healed { // leave the cluster whole for the teardown's logs
			_, _ = docker(time.Minute, "network", "connect", "--ip", oldIP, "--alias", cut, c.clusterNet, cid)
		}
	}()
	t.Logf("cut %s (the leader, %s) off the cluster network", cut, oldIP)

	waitFor(t, 20*time.Second, 100*time.Millisecond, "the cut-off node answers on its host port", func() (bool, string) {
		r := c.do("GET", cut, "/health", nil)
		return r.err == nil && r.status == 200, r.String()
	})

	// Writes on the cut-off node: every one refused with UNAVAILABLE, none
	// acked. Batch A goes in at once (the node may still think it leads).
	w, err := c.dial(cut)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var refusedIDs []string
	var replyTimes []time.Duration
	writeBatch := func(label string, k int) {
		type sent struct {
			id, rid string
			ch      chan frame
			at      time.Time
		}
		var batch []sent
		for i := 0; i < k; i++ {
			id := uuid.NewString()
			rid, ch, err := w.send(publishReq(topic, id, map[string]any{"cut": label, "n": i}))
			if err != nil {
				t.Fatalf("send to the cut-off node: %v", err)
			}
			batch = append(batch, sent{id, rid, ch, time.Now()})
		}
		for _, s := range batch {
			f, err := w.wait(s.rid, s.ch, 20*time.Second)
			if err != nil {
				t.Fatalf("cut-off node, batch %s: %v (it must answer UNAVAILABLE rather than hang)", label, err)
			}
			if f.Type == "ack" {
				t.Errorf("BUG: the cut-off node ACKED message %s (batch %s), which it cannot have committed", s.id, label)
				continue
			}
			if f.code() != "UNAVAILABLE" {
				t.Errorf("cut-off node, batch %s: %s %s, want error UNAVAILABLE", label, f.Type, f.code())
			}
			refusedIDs = append(refusedIDs, s.id)
			replyTimes = append(replyTimes, f.at.Sub(s.at))
		}
	}
	writeBatch("A", 5)

	// The majority elects a leader of its own and keeps serving.
	newLeader, _ := c.agreedLeader(t, majority, majority, 30*time.Second)
	election := time.Since(cutAt)
	var majorityAcked []string
	for _, n := range majority {
		mw, err := c.dial(n)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 50; i++ {
			id := uuid.NewString()
			f, err := mw.publish(topic, id, map[string]any{"majority": n, "n": i}, 20*time.Second)
			if err != nil || f.Type != "ack" {
				t.Fatalf("majority node %s, publish %d while %s is cut off: %+v %v", n, i, cut, f, err)
			}
			majorityAcked = append(majorityAcked, id)
		}
		mw.Close()
	}
	if r := c.do("POST", majority[1], "/topics", map[string]string{"name": "made-in-partition"}); r.status != 201 {
		t.Fatalf("POST /topics on majority node %s: %s", majority[1], r)
	}

	// Batch B, once the majority has moved on; and REST writes.
	writeBatch("B", 5)
	restStart := time.Now()
	if r := c.do("POST", cut, "/topics", map[string]string{"name": "made-while-cut-off"}); r.status != 503 || r.code() != "UNAVAILABLE" {
		t.Errorf("POST /topics on the cut-off node: want 503 UNAVAILABLE, got %s", r)
	}
	if r := c.do("DELETE", cut, "/topics/"+topic, nil); r.status != 503 || r.code() != "UNAVAILABLE" {
		t.Errorf("DELETE /topics/%s on the cut-off node: want 503 UNAVAILABLE, got %s", topic, r)
	}
	restTook := time.Since(restStart)
	cutView, _ := c.status(cut)
	t.Logf("the cut-off node's view: %s", cutView)
	w.Close()

	// Heal: back on the cluster network at its old address.
	mustDocker(t, time.Minute, "network", "connect", "--ip", oldIP, "--alias", cut, c.clusterNet, cid)
	healed = true
	healedAt := time.Now()
	mustDocker(t, time.Minute, "network", "disconnect", c.sideNet, cid)
	cutFor := healedAt.Sub(cutAt)

	_, rejoin := c.agreedLeader(t, nodes, nodes, 90*time.Second)
	total, _ := c.converged(t, topic, nodes, 60*time.Second)
	c.waitListed(t, "made-in-partition", true)
	c.waitListed(t, "made-while-cut-off", false)
	converge := time.Since(healedAt)
	committed := c.checkRings(t, topic, nodes, total)
	pos := map[string]bool{}
	for _, id := range committed {
		pos[id] = true
	}
	for _, id := range majorityAcked {
		if !pos[id] {
			t.Errorf("LOST: message %s acked by the majority during the partition is missing after it healed", id)
		}
	}
	refusedCommitted := 0
	for _, id := range refusedIDs {
		if pos[id] {
			refusedCommitted++
		}
	}
	if refusedCommitted > 0 {
		t.Logf("note: %d of the messages the cut-off node refused with UNAVAILABLE were committed after the heal (allowed: UNAVAILABLE does not say it was not)", refusedCommitted)
	}

	// The healed node takes writes again and delivers to the majority.
	sub, err := c.dial(majority[0])
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := sub.subscribe(topic, "after-heal", 0); err != nil {
		t.Fatal(err)
	}
	hw, err := c.dial(cut)
	if err != nil {
		t.Fatal(err)
	}
	defer hw.Close()
	id := uuid.NewString()
	if f, err := hw.publish(topic, id, "after heal", 20*time.Second); err != nil || f.Type != "ack" {
		t.Fatalf("publish on %s after the heal: %+v %v", cut, f, err)
	}
	if ev, err := sub.nextEvent(10 * time.Second); err != nil || ev.Message.ID != id {
		t.Fatalf("event published on the healed %s, on %s: %+v %v", cut, majority[0], ev, err)
	}

	c.m.note("cut-off: %s (leader) cut off for %s; majority elected %s %s after the cut and acked %d publishes + a topic; the cut-off node refused all %d WebSocket writes with UNAVAILABLE (reply in max %s, p50 %s) and REST writes with 503 (%s for 2), acked none; after reconnecting, one leader again after %s, every node converged (%d messages, same rings) %s after the heal",
		cut, secs(cutFor), newLeader, secs(election), len(majorityAcked), len(refusedIDs), secs(percentile(replyTimes, 1)), secs(percentile(replyTimes, 0.5)), secs(restTook), secs(rejoin), total, secs(converge))
	c.m.set("cutoff_refused", fmt.Sprint(len(refusedIDs)))
	c.m.set("cutoff_acked", "0")
	c.m.set("cutoff_max_reply", secs(percentile(replyTimes, 1)))
	c.m.set("heal_converge", secs(converge))
}

func testNewIP(t *testing.T, c *cluster) {
	const topic = "new-ip"
	leader, _ := c.agreedLeader(t, nodes, nodes, 30*time.Second)
	node := "node-3"
	if leader == node {
		node = "node-2"
	}
	rest := others(node)
	c.createTopic(t, rest[0], topic)
	oldIP := c.ipOf(t, node)

	// Remove the container (the volume stays) and create it again.
	removedAt := time.Now()
	c.mustCompose(t, 2*time.Minute, "rm", "-s", "-f", node)
	// Messages it must catch up on.
	w, err := c.dial(rest[0])
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if f, err := w.publish(topic, uuid.NewString(), i, 20*time.Second); err != nil || f.Type != "ack" {
			t.Fatalf("publish while %s is gone: %+v %v", node, f, err)
		}
	}
	w.Close()
	c.mustCompose(t, 2*time.Minute, "up", "--no-start", "--no-deps", "--no-build", node)
	cid := c.container(t, node)

	// A new address: one no container on the network holds.
	used := mustDocker(t, 30*time.Second, "network", "inspect", "-f", "{{range .Containers}}{{.IPv4Address}} {{end}}", c.clusterNet)
	newIP := ""
	for last := 200; last < 250; last++ {
		ip := c.hostIP(last)
		if ip != oldIP && !strings.Contains(" "+used, " "+ip+"/") {
			newIP = ip
			break
		}
	}
	if newIP == "" {
		t.Fatalf("no free address in %s (used: %s)", c.subnet, used)
	}
	mustDocker(t, time.Minute, "network", "disconnect", c.clusterNet, cid)
	mustDocker(t, time.Minute, "network", "connect", "--ip", newIP, "--alias", node, c.clusterNet, cid)
	startedAt := time.Now()
	mustDocker(t, time.Minute, "start", cid)
	if ip := c.ipOf(t, node); ip != newIP {
		t.Fatalf("%s came up at %s, not the new address %s", node, ip, newIP)
	}
	t.Logf("recreated %s: %s → %s", node, oldIP, newIP)

	// Every node sees it alive at the new address, and it follows the leader.
	rejoin := waitFor(t, 180*time.Second, 200*time.Millisecond, fmt.Sprintf("%s rejoins at %s", node, newIP), func() (bool, string) {
		var seen []string
		ok := true
		leaders := map[string]bool{}
		for _, n := range nodes {
			s, err := c.status(n)
			if err != nil {
				return false, n + ": " + err.Error()
			}
			seen = append(seen, s.String())
			addr, st, voter, found := s.member(node)
			if !s.healthy(nodes) || !found || addr != newIP || st != "alive" || !voter {
				ok = false
			}
			leaders[s.LeaderID] = true
		}
		return ok && len(leaders) == 1, strings.Join(seen, "; ")
	})
	c.converged(t, topic, nodes, 60*time.Second)
	catchup := time.Since(startedAt)

	// It takes writes and gets events from the others.
	sub, err := c.dial(node)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := sub.subscribe(topic, "new-ip", 0); err != nil {
		t.Fatal(err)
	}
	pw, err := c.dial(rest[1])
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	id := uuid.NewString()
	if f, err := pw.publish(topic, id, "to the new address", 20*time.Second); err != nil || f.Type != "ack" {
		t.Fatalf("publish on %s: %+v %v", rest[1], f, err)
	}
	if ev, err := sub.nextEvent(10 * time.Second); err != nil || ev.Message.ID != id {
		t.Fatalf("event on the recreated %s: %+v %v", node, ev, err)
	}
	own, err := c.dial(node)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if f, err := own.publish(topic, uuid.NewString(), "from the new address", 20*time.Second); err != nil || f.Type != "ack" {
		t.Fatalf("publish on the recreated %s: %+v %v", node, f, err)
	}
	total, _ := c.converged(t, topic, nodes, 30*time.Second)
	c.checkRings(t, topic, nodes, total)

	c.m.note("new IP: %s removed and recreated (%s → %s), %s after removal: alive at the new address on every node %s after start, caught up %s after start",
		node, oldIP, newIP, secs(startedAt.Sub(removedAt)), secs(rejoin), secs(catchup))
	c.m.set("new_ip_rejoin", secs(rejoin))
}

func testFinalConvergence(t *testing.T, c *cluster) {
	c.agreedLeader(t, nodes, nodes, 30*time.Second)
	for _, topic := range []string{"orders", "failover", "partition", "new-ip"} {
		c.converged(t, topic, nodes, 30*time.Second)
	}
	var lists [][]string
	for _, n := range nodes {
		names, err := c.topics(n)
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(names)
		lists = append(lists, names)
	}
	for i := 1; i < len(lists); i++ {
		if !slices.Equal(lists[0], lists[i]) {
			t.Fatalf("topics differ: %s %v, %s %v", nodes[0], lists[0], nodes[i], lists[i])
		}
	}
	c.m.note("final: every node has the same topics %v and message counts", lists[0])
}
