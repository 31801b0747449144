package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// benchNodes starts n in-process nodes on loopback and waits for a leader.
func benchNodes(b *testing.B, n int, tweaks ...func(*Config)) []*Node {
	b.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nodes := make([]*Node, 0, n)
	var join []string
	for i := 0; i < n; i++ {
		br := broker.New(broker.Config{RingSize: 100, QueueSize: 4096})
		cfg := Config{
			NodeID: "b" + strconv.Itoa(i+1), DataDir: b.TempDir(),
			BindAddr: "127.0.0.1", AdvertiseAddr: "127.0.0.1",
			Join: join, BootstrapExpect: n, Logger: log,
			MaxInflight: envInt("BENCH_INFLIGHT"), MaxBatch: envInt("BENCH_BATCH"),
		}
		for _, tweak := range tweaks {
			tweak(&cfg)
		}
		node, err := Start(br, cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { node.Close() })
		if i == 0 {
			join = []string{node.GossipAddr()}
		}
		nodes = append(nodes, node)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, node := range nodes {
			if node.Leader() {
				if err := node.broker.CreateTopic(context.Background(), "bench"); err != nil {
					b.Fatal(err)
				}
				// Every node must know the topic before publishing.
				for _, other := range nodes {
					for !other.broker.HasTopic("bench") {
						time.Sleep(5 * time.Millisecond)
					}
				}
				return nodes
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Fatal("no leader")
	return nil
}

// BenchmarkAckedPublish measures acked publishes/s of 256-byte messages with
// pipelined publishers, and the publish-to-ack latency they see. Publishers
// are spread over every node, so on a cluster two thirds are forwarded.
func BenchmarkAckedPublish(b *testing.B) {
	payload := []byte(`"` + string(make([]byte, 0)) + fmt.Sprintf("%0254d", 0) + `"`)
	for _, nodesN := range []int{1, 3} {
		for _, pubs := range []int{1, 16} {
			depth := 64
			if pubs == 1 {
				depth = 1
			}
			b.Run(fmt.Sprintf("nodes=%d/publishers=%d/depth=%d", nodesN, pubs, depth), func(b *testing.B) {
				nodes := benchNodes(b, nodesN)
				// Publisher 0 is on the leader; the others go round the nodes.
				for i, node := range nodes {
					if node.Leader() {
						nodes = append(nodes[i:], nodes[:i]...)
						break
					}
				}
				lat := make([][]time.Duration, pubs)
				per := b.N/pubs + 1
				var wg sync.WaitGroup
				b.ResetTimer()
				start := time.Now()
				for p := 0; p < pubs; p++ {
					wg.Add(1)
					go func(p int) {
						defer wg.Done()
						br := nodes[p%len(nodes)].broker
						type inflight struct {
							at time.Time
							p  broker.Pending
						}
						window := make([]inflight, 0, depth)
						wait := func(f inflight) {
							res, err := f.p.Wait(context.Background())
							if err == nil {
								err = res.Err
							}
							if err != nil {
								b.Error(err)
							}
							lat[p] = append(lat[p], time.Since(f.at))
						}
						for i := 0; i < per; i++ {
							if len(window) == depth {
								wait(window[0])
								window = window[1:]
							}
							window = append(window, inflight{time.Now(), br.Publish("bench", broker.Message{ID: "00000000-0000-0000-0000-000000000000", Payload: payload})})
						}
						for _, f := range window {
							wait(f)
						}
					}(p)
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				all := slices.Concat(lat...)
				slices.Sort(all)
				b.ReportMetric(float64(len(all))/elapsed.Seconds(), "msgs/s")
				b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
			})
		}
	}
}

// envInt reads a benchmark knob: BENCH_INFLIGHT and BENCH_BATCH override
// Config.MaxInflight and MaxBatch, BENCH_RATE the rate of
// BenchmarkAckLatencyAtRate, whose BENCH_ONLY=leader|follower publishes
// from that one node only.
func envInt(name string) int {
	n, _ := strconv.Atoi(os.Getenv(name))
	return n
}

// BenchmarkAckLatencyAtRate publishes 256-byte messages at a fixed 10,000/s
// (half the throughput goal) spread over the three nodes, and reports the
// ack latency measured from each message's intended send time.
func BenchmarkAckLatencyAtRate(b *testing.B) {
	rate := envInt("BENCH_RATE")
	if rate == 0 {
		rate = 10000
	}
	payload := []byte(`"` + fmt.Sprintf("%0254d", 0) + `"`)
	nodes := benchNodes(b, 3)
	if os.Getenv("BENCH_ONLY") == "leader" {
		for _, n := range nodes {
			if n.Leader() {
				nodes = []*Node{n}
			}
		}
	}
	if os.Getenv("BENCH_ONLY") == "follower" {
		nodes = followers(nodes)[:1]
	}
	hist := &latencyHistogram{}
	interval := time.Second / time.Duration(rate)
	type inflight struct {
		intended, sent time.Time
		p              broker.Pending
	}
	sendLag := &latencyHistogram{}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for p := 0; p < len(nodes); p++ {
		acks := make(chan inflight, 4096)
		wg.Add(2)
		go func(br *broker.Broker) {
			defer wg.Done()
			defer close(acks)
			for i := p; i < b.N; i += len(nodes) {
				intended := start.Add(time.Duration(i) * interval)
				time.Sleep(time.Until(intended))
				sendLag.add(time.Since(intended))
				acks <- inflight{intended, time.Now(), br.Publish("bench", broker.Message{ID: "00000000-0000-0000-0000-000000000000", Payload: payload})}
			}
		}(nodes[p].broker)
		go func() {
			defer wg.Done()
			for f := range acks {
				res, err := f.p.Wait(context.Background())
				if err == nil {
					err = res.Err
				}
				if err != nil {
					b.Error(err)
				}
				hist.add(time.Since(f.intended))
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	b.ReportMetric(ms(hist.quantile(0.5)), "p50-ms")
	b.ReportMetric(ms(hist.quantile(0.99)), "p99-ms")
	b.ReportMetric(ms(sendLag.quantile(0.99)), "send-lag-p99-ms")
}
