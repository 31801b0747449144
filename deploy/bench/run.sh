#!/usr/bin/env bash
# Runs `enclave bench` against a single node and a three-node cluster of
# local processes on 127.0.0.1 (full runs: also the docker-compose.yml
# cluster, when Docker is there), and (when nats-server is installed) the same
# workloads against core NATS over WebSocket and a three-node JetStream R3
# cluster through deploy/bench's harness; then prints the comparison.
#
#   deploy/bench/run.sh            the full runs (make bench-compare); ~15 min
#   deploy/bench/run.sh --smoke    every workload for about a second (make bench-smoke, CI)
#
# Environment: OUT (results directory; default a new temporary one),
# NATS=0 (skip NATS), COMPOSE=0/1 (default: on for full runs when Docker
# works), NATS_REQUIRED=1 (fail when nats-server is missing),
# LOAD_MAX (default 0.7) and LOAD_WAIT (seconds, default 900): the full run
# waits, bounded, for the 1-minute load average to drop below LOAD_MAX.
# Every server this script starts is stopped by its PID; every wait is bounded.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)

MODE=full
if [[ "${1:-}" == "--smoke" ]]; then MODE=smoke; fi

OUT=${OUT:-$(mktemp -d -t enclave-bench-XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d -t enclave-bench-work-XXXXXX)
BIN="$WORK/bin"
mkdir -p "$BIN"
PIDS=()

log() { printf '=== %s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

stop_all() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	PIDS=()
}
cleanup() {
	stop_all
	stop_compose
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building bin/enclave and the NATS harness"
go build -o "$BIN/enclave" ./cmd/enclave
NATS=${NATS:-1}
if [[ "$NATS" == 1 ]] && ! command -v nats-server >/dev/null; then
	if [[ "${NATS_REQUIRED:-0}" == 1 ]]; then
		echo "nats-server not found: apt-get install -y nats-server" >&2
		exit 1
	fi
	log "nats-server not installed: skipping the NATS runs (apt-get install -y nats-server)"
	NATS=0
fi
if [[ "$NATS" == 1 ]]; then
	(cd deploy/bench && go build -o "$BIN/natsbench" .)
fi

# wait_idle: the figures mean something only on an otherwise idle machine.
wait_idle() {
	local max=${LOAD_MAX:-0.7} waited=0 limit=${LOAD_WAIT:-900} load
	while :; do
		load=$(cut -d' ' -f1 /proc/loadavg)
		if awk -v l="$load" -v m="$max" 'BEGIN{exit !(l < m)}'; then
			log "load average $(cut -d' ' -f1-3 /proc/loadavg) (below $max)"
			return 0
		fi
		if ((waited >= limit)); then
			log "WARNING: load average still $load after ${limit}s; measuring anyway (figures will be low)"
			return 0
		fi
		sleep 15
		waited=$((waited + 15))
	done
}

# cpu_busy: percent of the machine's CPU time that was busy over 2 s.
# Time waiting for the disk (iowait) counts as busy: enclave fsyncs every
# Raft append, so a disk still writing back what the previous run (or a
# container teardown) left shows up in its latency tail.
cpu_busy() {
	local a b
	read -r -a a </proc/stat
	sleep 2
	read -r -a b </proc/stat
	local t=0 idle i
	for i in 1 2 3 4 5 6 7 8; do t=$((t + b[i] - a[i])); done
	idle=$((b[4] - a[4]))
	((t > 0)) || t=1
	echo $((100 * (t - idle) / t))
}

# wait_quiet SETUP CASE: before each full run, with nothing of ours
# running, wait (bounded by QUIET_WAIT, default 300 s) until other work
# takes less than BUSY_MAX (default 15) percent of the CPU; log what it was.
wait_quiet() {
	[[ "$MODE" == full ]] || return 0
	# What the previous run left in the page cache (JetStream does not
	# fsync; container teardown writes too) would otherwise be written back
	# during this one, in front of its fsyncs.
	sync
	local busy waited=0
	while :; do
		busy=$(cpu_busy)
		if ((busy < ${BUSY_MAX:-15})) || ((waited >= ${QUIET_WAIT:-300})); then
			break
		fi
		sleep 8
		waited=$((waited + 10))
	done
	printf '%s %s: other CPU use %s%% before the run (waited %ss), loadavg %s\n' "$1" "$2" "$busy" "$waited" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
}

# start_enclave N: starts N nodes (HTTP 18101.., Raft 18111.., gossip
# 18121..) with fresh data directories and waits until each answers and,
# for a cluster, sees a leader and N members.
# http_get PORT PATH: a GET on 127.0.0.1 with bash alone (no curl needed).
http_get() {
	exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
	printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
	cat <&3
	exec 3<&-
}

NODES=""
SERVER_PIDS=""
start_enclave() {
	local n=$1 i join="" port
	if ((n > 1)); then
		for i in $(seq 1 "$n"); do join+="${join:+,}127.0.0.1:$((18120 + i))"; done
	fi
	NODES="" SERVER_PIDS=""
	rm -rf "$WORK/data"
	for i in $(seq 1 "$n"); do
		port=$((18100 + i))
		if ((n > 1)); then
			PORT=$port RAFT_PORT=$((18110 + i)) GOSSIP_PORT=$((18120 + i)) DATA_DIR="$WORK/data/n$i" NODE_ID="n$i" \
				ADVERTISE_ADDR=127.0.0.1 JOIN="$join" BOOTSTRAP_EXPECT=$n LOG_LEVEL=WARN \
				"$BIN/enclave" >>"$WORK/enclave-n$i.log" 2>&1 &
		else
			PORT=$port RAFT_PORT=$((18110 + i)) GOSSIP_PORT=$((18120 + i)) DATA_DIR="$WORK/data/n$i" NODE_ID="n$i" LOG_LEVEL=WARN \
				"$BIN/enclave" >>"$WORK/enclave-n$i.log" 2>&1 &
		fi
		PIDS+=($!)
		NODES+="${NODES:+,}ws://127.0.0.1:$port/ws"
		SERVER_PIDS+="${SERVER_PIDS:+,}$!"
	done
	for i in $(seq 1 "$n"); do
		port=$((18100 + i))
		local ok=0
		for _ in $(seq 1 300); do
			if body=$(http_get "$port" /cluster 2>/dev/null) &&
				! grep -q '"leader_id":""' <<<"$body" &&
				[[ $(grep -o '"status":"alive"' <<<"$body" | wc -l) -ge $n ]]; then
				ok=1
				break
			fi
			sleep 0.1
		done
		if ((ok == 0)); then
			echo "enclave node $i did not become ready; its log:" >&2
			tail -20 "$WORK/enclave-n$i.log" >&2
			return 1
		fi
	done
}

# Compose: the repository's docker-compose.yml (three nodes on a private
# bridge network, HTTP published on 127.0.0.1:18301-18303), with the FROM
# scratch image of a binary built here (deploy/Dockerfile.scratch), under
# its own project name so it never touches another compose project.
COMPOSE_PROJECT=enclave-bench
compose() {
	ENCLAVE_IMAGE=mr-enclave:bench NODE1_PORT=127.0.0.1:18301 NODE2_PORT=127.0.0.1:18302 NODE3_PORT=127.0.0.1:18303 \
		LOG_LEVEL=WARN docker-compose -p "$COMPOSE_PROJECT" -f "$ROOT/docker-compose.yml" "$@"
}
COMPOSE_UP=0
start_compose() {
	local ctx="$WORK/docker" i port
	if [[ ! -x "$ctx/bin/docker/enclave" ]]; then
		mkdir -p "$ctx/bin/docker/data"
		CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$ctx/bin/docker/enclave" ./cmd/enclave
		docker build -q -f deploy/Dockerfile.scratch -t mr-enclave:bench "$ctx" >/dev/null
	fi
	COMPOSE_UP=1
	compose up -d --no-build >"$WORK/compose.log" 2>&1
	NODES="" SERVER_PIDS=""
	for i in 1 2 3; do
		port=$((18300 + i))
		NODES+="${NODES:+,}ws://127.0.0.1:$port/ws"
		SERVER_PIDS+="${SERVER_PIDS:+,}$(docker inspect -f '{{.State.Pid}}' "$(compose ps -q "node-$i")")"
	done
	for i in 1 2 3; do
		port=$((18300 + i))
		local ok=0
		for _ in $(seq 1 600); do
			if body=$(http_get "$port" /cluster 2>/dev/null) &&
				! grep -q '"leader_id":""' <<<"$body" &&
				[[ $(grep -o '"status":"alive"' <<<"$body" | wc -l) -ge 3 ]]; then
				ok=1
				break
			fi
			sleep 0.1
		done
		if ((ok == 0)); then
			echo "compose node $i did not become ready" >&2
			compose logs --tail 20 >&2 || true
			return 1
		fi
	done
}
stop_compose() {
	if ((COMPOSE_UP)); then
		compose down -v -t 15 >>"$WORK/compose.log" 2>&1 || true
		COMPOSE_UP=0
	fi
}
COMPOSE=${COMPOSE:-auto}
if [[ "$COMPOSE" == auto ]]; then
	COMPOSE=0
	if [[ "$MODE" == full ]] && command -v docker-compose >/dev/null && docker info >/dev/null 2>&1 && [[ -f docker-compose.yml && -f deploy/Dockerfile.scratch ]]; then
		COMPOSE=1
	fi
fi

FAILED=0
# run_case SETUP CASE ARGS...: one run, its table on stderr, its JSON in $OUT.
run_case() {
	local setup=$1 kase=$2
	shift 2
	local json="$OUT/${setup}__${kase}.json"
	log "$setup $kase: $*"
	if [[ "$setup" == nats-* || "$setup" == jetstream-* ]]; then wait_quiet "$setup" "$kase"; fi
	local status=0
	case "$setup" in
	enclave-*)
		"$BIN/enclave" bench --nodes "$NODES" --server-pid "$SERVER_PIDS" --json "$@" >"$json" || status=$?
		;;
	nats-ws-*)
		"$BIN/natsbench" --system nats-ws --servers 1 --json "$@" >"$json" || status=$?
		;;
	jetstream-*)
		"$BIN/natsbench" --system jetstream --servers 3 --replicas 3 --max-msgs 100 --json "$@" >"$json" || status=$?
		;;
	esac
	if ((status != 0)); then
		log "FAILED ($status): $setup $kase"
		FAILED=1
		[[ -s "$json" ]] || rm -f "$json"
	fi
}

# The cases: name, then the flags. Full runs measure; smoke runs only prove
# that every workload still runs end to end (a second each).
if [[ "$MODE" == full ]]; then
	CASES=(
		"publish|--workload publish --publishers 4 --depth 64 --size 256 --duration 15s"
		"publish-16x64|--workload publish --publishers 16 --depth 64 --size 256 --duration 15s"
		"publish-rate500|--workload publish --publishers 1 --rate 500 --size 256 --duration 15s"
		"fanout-rate100|--workload fanout --subscribers 1000 --rate 100 --size 256 --duration 15s"
		"fanout-max|--workload fanout --subscribers 1000 --rate max --window 64 --size 256 --duration 15s"
		"latency|--workload latency --rate 1000 --size 256 --duration 15s"
		"connections|--workload connections --connections 5000 --hold 3s"
	)
	wait_idle
else
	CASES=(
		"publish|--workload publish --publishers 2 --depth 16 --duration 1s"
		"fanout-rate100|--workload fanout --subscribers 50 --rate 100 --duration 1s"
		"fanout-max|--workload fanout --subscribers 50 --rate max --duration 1s"
		"latency|--workload latency --rate 500 --duration 1s"
		"connections|--workload connections --connections 200 --hold 200ms"
	)
fi
echo "load at start: $(cat /proc/loadavg)" >"$OUT/machine.txt"
{
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
	echo "memory: $(grep MemTotal /proc/meminfo | awk '{print $2/1048576 " GiB"}')"
	echo "kernel: $(uname -sr)"
	echo "go: $(go version)"
	echo "source: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' + uncommitted changes')"
	command -v nats-server >/dev/null && echo "nats-server: $(nats-server --version)"
} >>"$OUT/machine.txt"

QUIET=()
[[ "$MODE" == smoke ]] && QUIET=(--quiet)

for entry in "${CASES[@]}"; do
	kase=${entry%%|*}
	read -r -a args <<<"${entry#*|}"
	wait_quiet enclave-1node "$kase"
	start_enclave 1
	run_case enclave-1node "$kase" "${args[@]}" "${QUIET[@]}"
	stop_all
	wait_quiet enclave-3node "$kase"
	start_enclave 3
	run_case enclave-3node "$kase" "${args[@]}" "${QUIET[@]}"
	stop_all
	if [[ "$NATS" == 1 ]]; then
		run_case nats-ws-1node "$kase" "${args[@]}" "${QUIET[@]}"
		run_case jetstream-r3-3node "$kase" "${args[@]}" "${QUIET[@]}"
	fi
done
# The compose cluster last: starting and removing containers and volumes
# keeps the disk busy for a while, which would land in the tail latency of
# whatever ran next.
if [[ "$COMPOSE" == 1 ]]; then
	for entry in "${CASES[@]}"; do
		kase=${entry%%|*}
		read -r -a args <<<"${entry#*|}"
		wait_quiet enclave-compose "$kase"
		start_compose
		run_case enclave-compose "$kase" "${args[@]}" "${QUIET[@]}"
		stop_compose
	done
fi
echo "load at end: $(cat /proc/loadavg)" >>"$OUT/machine.txt"

if [[ "$NATS" == 1 ]]; then
	"$BIN/natsbench" report "$OUT" >"$OUT/report.md"
	cat "$OUT/machine.txt" "$OUT/report.md"
	[[ -f "$OUT/load.txt" ]] && cat "$OUT/load.txt"
fi
log "results in $OUT"
if ((FAILED)); then
	log "some runs failed"
	exit 1
fi
