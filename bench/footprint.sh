#!/usr/bin/env bash
# Footprint of a running `ferry serve` (issue 4): what an idle node costs, whether its
# thread count stays fixed under load, and whether `ferry status` costs the same after
# 1 transfer and after many.
#
#   bench/footprint.sh [--ferry PATH] [--idle-seconds N] [--senders N] [--transfers N] [--record]
#
# 1. Idle wakeups: the context switches (voluntary + involuntary) of every thread of an
#    idle serve, from /proc/PID/task/*/status, over N seconds (default 10). Target: <= 1/s.
# 2. Threads: the serve's thread count (/proc/PID/status) sampled while 1, then N (default
#    32) senders send to it at once (64 MiB each), and the time `ferry status` takes then. Target: the same number as idle.
# 3. Status cost: `ferry status --json` time (fastest of 20) and reply size after 1
#    transfer and after N (default 10000) more transfers from the same peer (4 senders at
#    a time). Target: equal.
#
# 4. Idle again after all the transfers: nothing they started may keep ticking.
#
# Only 127.0.0.1; data in a temp folder under /dev/shm; every wait is bounded.
# --record appends the report to bench/RESULTS.md.
set -euo pipefail
export LC_ALL=C

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ferry=${FERRY_BIN:-$repo/build/release/tools/ferry}
idle_s=10
senders=32
transfers=10000
record=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --ferry) ferry=$2; shift 2 ;;
        --idle-seconds) idle_s=$2; shift 2 ;;
        --senders) senders=$2; shift 2 ;;
        --transfers) transfers=$2; shift 2 ;;
        --record) record=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "footprint: unknown option $1" >&2; exit 1 ;;
    esac
done
[[ -x $ferry ]] || { echo "footprint: no ferry binary at $ferry (build first)" >&2; exit 1; }

work=$(mktemp -d /dev/shm/ferry-footprint.XXXXXX)
serve_pid=
cleanup() {
    [[ -n $serve_pid ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
log() { printf 'footprint: %s\n' "$*" >&2; }

A=$work/state-A B=$work/state-B
a_id=$("$ferry" id --state "$A")
b_id=$("$ferry" id --state "$B")
"$ferry" trust "$b_id" --state "$A" >/dev/null 2>&1
"$ferry" trust "$a_id" --state "$B" >/dev/null 2>&1

"$ferry" serve --no-discovery --state "$A" --listen 127.0.0.1:0 --inbox "$work/inbox" --json --quiet \
    >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
for _ in $(seq 100); do
    grep -q listening "$work/serve.out" 2>/dev/null && break
    sleep 0.05
done
addr=$(sed -n 's/.*"address":"\([^"]*\)".*/\1/p' "$work/serve.out" | head -1)
[[ -n $addr ]] || { log "serve did not start: $(cat "$work/serve.err")"; exit 1; }

switches() {
    local total=0 v
    for f in /proc/"$serve_pid"/task/*/status; do
        v=$(awk '/^(voluntary|nonvoluntary)_ctxt_switches/ { s += $2 } END { print s + 0 }' "$f" 2>/dev/null || echo 0)
        total=$((total + v))
    done
    echo "$total"
}
# node_answer_us N: the node's own answer time to `status` on its control socket, in
# microseconds, fastest of N requests from one running client (no process start); "?"
# without python3.
node_answer_us() {
    python3 - "$A/control.sock" "$1" 2>/dev/null <<'PY' || echo "?"
import socket, sys, time
best = None
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    t0 = time.perf_counter()
    s.connect(sys.argv[1]); s.sendall(b"status\n")
    while s.recv(65536): pass
    s.close()
    t = time.perf_counter() - t0
    best = t if best is None or t < best else best
print(int(best * 1e6))
PY
}
threads() { awk '/^Threads:/ { print $2 }' /proc/"$serve_pid"/status; }

# 1. Idle wakeups.
sleep 1  # let start-up settle
before=$(switches)
sleep "$idle_s"
after=$(switches)
idle_switches=$((after - before))
idle_rate=$(awk -v n="$idle_switches" -v s="$idle_s" 'BEGIN { printf "%.2f", n / s }')
idle_threads=$(threads)
log "idle: $idle_switches context switches in $idle_s s ($idle_rate/s), $idle_threads threads"

# 2. Threads under 1 and N concurrent senders (each its own 64 MiB sparse file).
max_threads_with() {
    local n=$1 pids=() max=0 t
    for i in $(seq "$n"); do
        truncate -s 64M "$work/payload-$i.bin"
        "$ferry" send --state "$B" --quiet --overwrite "$work/payload-$i.bin" "$a_id@$addr" \
            >/dev/null 2>"$work/send-$i.err" &
        pids+=($!)
    done
    local probed=0 t0 t1
    for k in $(seq 6000); do  # bounded: 6000 x 10 ms
        t=$(threads); (( t > max )) && max=$t
        if (( k == 30 && n > 1 )); then  # 0.3 s in: how long status takes with all of them running
            t0=$(date +%s%N)
            "$ferry" status --state "$A" --json >"$work/busy-status.json"
            t1=$(date +%s%N)
            echo $(( (t1 - t0) / 1000 )) >"$work/busy-status.us"
            # The node's own answer time, without starting a process: one request on the
            # control socket, timed by an already running client.
            node_answer_us 1 >"$work/busy-rtt.us"
        fi
        local alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.01
    done
    local failed=0
    for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
    (( failed == 0 )) || log "$failed of $n senders failed (see $work/send-*.err)"
    echo "$max"
}
threads_1=$(max_threads_with 1)
threads_n=$(max_threads_with "$senders")
log "threads: idle $idle_threads, 1 sender $threads_1, $senders senders $threads_n"
busy_us=$(cat "$work/busy-status.us" 2>/dev/null || echo "?")
busy_rtt=$(cat "$work/busy-rtt.us" 2>/dev/null || echo "?")
busy_transfers=$(grep -o '"transfers_in_flight":[0-9]*' "$work/busy-status.json" 2>/dev/null | cut -d: -f2 || echo "?")
log "status with $senders senders running: $busy_us us, the node's answer $busy_rtt us ($busy_transfers transfers in flight)"

# 3. Status cost after 1 transfer and after many.
echo x >"$work/tiny.txt"
status_cost() {
    local best=999999 t0 t1 ms node
    for _ in $(seq 20); do
        t0=$(date +%s%N)
        "$ferry" status --state "$A" --json >"$work/status.json"
        t1=$(date +%s%N)
        ms=$(( (t1 - t0) / 1000 ))
        (( ms < best )) && best=$ms
    done
    # The node's own answer, fastest of 200 requests from one running client.
    node=$(node_answer_us 200)
    echo "$best $(wc -c <"$work/status.json") $node"
}
"$ferry" send --state "$B" --quiet --overwrite "$work/tiny.txt" "$a_id@$addr" 2>/dev/null
read -r us_1 bytes_1 node_1 < <(status_cost)
log "status after $(( 2 + senders )) transfers: ${us_1} us, $bytes_1 bytes"
export ferry B a_id addr work
seq "$transfers" | xargs -P 4 -I{} sh -c \
    'mkdir -p "$work/tiny/{}" && echo {} >"$work/tiny/{}/t.txt" &&
     "$ferry" send --state "$B" --quiet "$work/tiny/{}" "$a_id@$addr" 2>/dev/null || echo "send {} failed" >&2'
ok=$("$ferry" status --state "$A" --json | sed -n 's/.*"transfers_ok":\([0-9]*\).*/\1/p')
log "the node counts $ok successful transfers"
read -r us_n bytes_n node_n < <(status_cost)
total_transfers=$(( 2 + senders + transfers ))
log "status after $total_transfers transfers: ${us_n} us, $bytes_n bytes"

# 4. Idle again, after all that: nothing the transfers started may keep ticking.
before=$(switches)
sleep "$idle_s"
after=$(switches)
idle_after=$((after - before))
idle_after_rate=$(awk -v n="$idle_after" -v s="$idle_s" 'BEGIN { printf "%.2f", n / s }')
log "idle after the transfers: $idle_after context switches in $idle_s s ($idle_after_rate/s)"

report=$(cat <<EOF
### Footprint, $(date -u +%Y-%m-%d) on $(nproc) cores ($(uname -r))

| figure | value | target |
| --- | --- | --- |
| idle serve: context switches, all threads, over ${idle_s} s | $idle_switches ($idle_rate/s) | <= 1/s |
| idle serve after $total_transfers transfers: context switches over ${idle_s} s | $idle_after ($idle_after_rate/s) | <= 1/s |
| threads: idle / 1 sender / $senders senders | $idle_threads / $threads_1 / $senders: $threads_n | fixed |
| \`ferry status --json\` (fastest of 20, process start included) after $(( 2 + senders )) / $total_transfers transfers ($ok counted ok) | ${us_1} us / ${us_n} us | equal |
| \`ferry status --json\` while $senders senders run ($busy_transfers transfers in flight): whole command / the node's answer alone | ${busy_us} us / ${busy_rtt} us | < 100 ms |
| the node's answer alone (fastest of 200) after $(( 2 + senders )) / $total_transfers transfers | ${node_1} us / ${node_n} us | equal |
| status reply size after $(( 2 + senders )) / $total_transfers transfers | $bytes_1 / $bytes_n bytes | equal |
EOF
)
echo "$report"
if (( record )); then
    printf '\n%s\n' "$report" >>"$repo/bench/RESULTS.md"
    log "appended to bench/RESULTS.md"
fi
