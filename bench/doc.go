// Package bench is the load generator behind `enclave bench`: it drives a
// broker over its real client protocol and reports rates, latency
// percentiles, delivered versus expected events and errors by code.
//
// Four workloads (Run): acked publish throughput (publishers pipelining up
// to a depth of un-acked publishes), fan-out (many subscribers of one topic,
// spread over the nodes, at a fixed publish rate or as fast as the slowest
// subscriber keeps up), end-to-end latency (publish → event, per subscriber
// node) and idle connections (server memory per connection, read from
// /proc/<pid> of local server processes).
//
// The workloads are written against the System interface, not against
// enclave: Enclave implements it over the WebSocket protocol (gorilla), and
// the NATS harness in deploy/bench (a module of its own, so the broker does
// not depend on the NATS client) implements it with the official NATS
// client. Both are therefore measured by the same pacing, flow control,
// histograms and report.
//
// Measurement rules:
//   - Latency is measured from each publish's intended send time (start +
//     i/rate), stamped into the payload, so a sender held up by the server
//     (a full pipeline, a slow ack) counts against the server: no
//     coordinated omission. Unpaced runs stamp the actual send time.
//   - Latencies go into a fixed-size log-linear Histogram (HDR-like, 0.8%
//     resolution), never into unbounded slices.
//   - Every run is bounded: sending stops after Duration (or Count
//     publishes), and waiting for the tail after Drain more.
//   - Frames are read by scanning for the few fields needed (type,
//     request_id, seq, payload) rather than decoding JSON: on a small
//     machine the client's CPU is taken from the server under test.
//
// The package knows the wire protocol and REST topic admin only; it imports
// nothing of the broker, gateway or cluster packages outside its tests.
package bench
