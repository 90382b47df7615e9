#!/usr/bin/env bash
# Discovery latency (issue 9): how long after `ferry serve` starts another node lists it.
# Two network namespaces joined by a veth pair (198.18.231.1 and .2, made here, removed on
# exit); needs root and iproute2, and says so otherwise. For each of ROUNDS runs:
#   joiner listed:  B runs; A starts; the time until B's `discovered` event names A
#                   (A's first announcement goes out as it starts listening);
#   running listed: the time until A's `discovered` event names B (B answers a node new
#                   to it within a drawn 0.5-1 s).
# Usage: bench/discovery.sh [ROUNDS] (default 5). FERRY=path to the binary (default the
# release build).
set -euo pipefail
cd "$(dirname "$0")/.."
log_tag=discovery
# shellcheck source=bench/lib.sh
source bench/lib.sh
rounds=${1:-5}
is_uint "$rounds" || die "ROUNDS must be a positive whole number"
ferry=${FERRY:-build/release/tools/ferry}
[ -x "$ferry" ] || die "no ferry binary at $ferry (make build)"
ferry=$(readlink -f "$ferry")
[ "$(id -u)" = 0 ] && command -v ip >/dev/null || { log "skipped: needs root and iproute2 (ip netns)"; exit 0; }

ns_a=ferry-bd-a$$ ns_b=ferry-bd-b$$
work=$(mktemp -d /tmp/ferry-discovery.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$ns_a" 2>/dev/null || true
    ip netns del "$ns_b" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns_a"
ip netns add "$ns_b"
ip link add "va$$" type veth peer name "vb$$"
ip link set "va$$" netns "$ns_a"
ip link set "vb$$" netns "$ns_b"
ip -n "$ns_a" addr add 198.18.231.1/24 dev "va$$"
ip -n "$ns_b" addr add 198.18.231.2/24 dev "vb$$"
ip -n "$ns_a" link set "va$$" up
ip -n "$ns_b" link set "vb$$" up

"$ferry" id --state "$work/A" > /dev/null
"$ferry" id --state "$work/B" > /dev/null
id_a=$("$ferry" id --state "$work/A" --json | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
id_b=$("$ferry" id --state "$work/B" --json | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
[ -n "$id_a" ] && [ -n "$id_b" ] || die "no node IDs"

# wait_for FILE ID: until FILE has a `discovered` event naming ID (bounded: 30 s).
wait_for() {
    local i
    for ((i = 0; i < 6000; i++)); do
        grep -q "\"discovered\",\"id\":\"$2\"" "$1" 2>/dev/null && return 0
        sleep 0.005
    done
    return 1
}

ip netns exec "$ns_b" "$ferry" serve --state "$work/B" --listen 0.0.0.0:0 --inbox "$work/in-b" --json \
    > "$work/b.out" 2> "$work/b.err" &
pids+=($!)
for ((i = 0; i < 600; i++)); do grep -q listening "$work/b.out" 2>/dev/null && break; sleep 0.01; done
joined=() answered=()
for ((r = 1; r <= rounds; r++)); do
    : > "$work/b.out"
    stamp; t0=$ts
    ip netns exec "$ns_a" "$ferry" serve --state "$work/A" --listen 0.0.0.0:0 --inbox "$work/in-a" --json \
        > "$work/a.out" 2> "$work/a.err" &
    pa=$!
    wait_for "$work/b.out" "$id_a" || die "B did not list A within 30 s: $(tail -3 "$work/b.err")"
    stamp; joined+=("$(sub "$ts" "$t0")")
    wait_for "$work/a.out" "$id_b" || die "A did not list B within 30 s: $(tail -3 "$work/a.err")"
    stamp; answered+=("$(sub "$ts" "$t0")")
    kill -TERM "$pa"; wait "$pa" 2>/dev/null || true
    log "round $r: B listed A after ${joined[-1]} s, A listed B after ${answered[-1]} s"
done
read -r jmin jmed <<< "$(stats "${joined[*]}")"
read -r amin amed <<< "$(stats "${answered[*]}")"
printf '| case | runs | fastest | median |\n| --- | --- | --- | --- |\n'
printf '| a node that starts is listed by the running one | %d | %.3f s | %.3f s |\n' "$rounds" "$jmin" "$jmed"
printf '| the running node is listed by the one that starts | %d | %.3f s | %.3f s |\n' "$rounds" "$amin" "$amed"
