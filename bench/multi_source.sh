#!/usr/bin/env bash
# Multi-source get (issue 9): one file from two peers, each behind its own emulated link,
# against the same file from one peer.
#
#   fm-c (getter) tc1 198.18.41.1 <== linkem #1 ==> ts1 198.18.41.2 fm-s1 (ferry serve)
#                 tc2 198.18.42.1 <== linkem #2 ==> ts2 198.18.42.2 fm-s2 (ferry serve)
#
# Each link: RATE Mbit/s each way and DELAY_MS one way (../shared/linkem, two instances
# run directly on TUN devices made here, removed on exit). Both servers share one folder
# holding the file. Per round, alternating: `ferry get PEER:pub/data.bin` (PEER s1, then
# s2 the next round) and `ferry get --from s1,s2 pub/data.bin`; every result is compared
# with the original (cmp). iperf3 over each link alone, then both at once, gives the link
# ceiling. Needs root, iproute2 and a C compiler; says so and exits 0 otherwise.
#
# Usage: bench/multi_source.sh [SIZE_MIB] [ROUNDS] (default 1024 3). RATE (100), DELAY_MS
# (10), FERRY (the release build), LINKEM_DIR (<project>/../shared/linkem), LOGS (a folder
# to keep each run's --json output in).
set -euo pipefail
cd "$(dirname "$0")/.."
log_tag=multi_source
# shellcheck source=bench/lib.sh
source bench/lib.sh
size_mib=${1:-1024}
rounds=${2:-3}
rate=${RATE:-100}
delay=${DELAY_MS:-10}
is_uint "$size_mib" || die "SIZE_MIB must be a positive whole number"
is_uint "$rounds" || die "ROUNDS must be a positive whole number"
ferry=${FERRY:-build/release/tools/ferry}
[ -x "$ferry" ] || die "no ferry binary at $ferry (make build)"
ferry=$(readlink -f "$ferry")
linkem_dir=${LINKEM_DIR:-$(pwd)/../shared/linkem}
[ -f "$linkem_dir/linkem.c" ] || { log "SKIPPED: no WAN emulator: $linkem_dir/linkem.c not found (set LINKEM_DIR)"; exit 0; }
[ "$(id -u)" = 0 ] && command -v ip >/dev/null && command -v cc >/dev/null ||
    { log "SKIPPED: needs root, iproute2 (ip netns) and cc"; exit 0; }

ns_c=fm-c$$ ns_1=fm-s1$$ ns_2=fm-s2$$
work=$(mktemp -d /tmp/ferry-multi.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for ns in "$ns_c" "$ns_1" "$ns_2"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

cc -O2 -Wall -o "$work/linkem" "$linkem_dir/linkem.c" -lm
make_ns() {
    ip netns add "$1"
    ip -n "$1" link set lo up
    ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 || true
}
# tun NS DEV ADDRESS
tun() {
    ip -n "$1" tuntap add dev "$2" mode tun
    ip -n "$1" link set "$2" mtu 1500 txqueuelen 10000 up
    ip -n "$1" addr add "$3/24" dev "$2"
}
make_ns "$ns_c"
make_ns "$ns_1"
make_ns "$ns_2"
tun "$ns_c" tc1 198.18.41.1
tun "$ns_c" tc2 198.18.42.1
tun "$ns_1" ts1 198.18.41.2
tun "$ns_2" ts2 198.18.42.2
for k in 1 2; do
    ns_s=$ns_1 && [ "$k" = 2 ] && ns_s=$ns_2
    setsid "$work/linkem" --ns-a "$ns_c" --dev-a "tc$k" --ns-b "$ns_s" --dev-b "ts$k" --delay-ms "$delay" \
        --rate-mbit "$rate" --seed "$k" --pidfile "$work/linkem$k.pid" --stats "$work/linkem$k.stats" \
        </dev/null >"$work/linkem$k.log" 2>&1 &
    pids+=($!)
done
for _ in $(seq 50); do
    [ -s "$work/linkem1.pid" ] && [ -s "$work/linkem2.pid" ] && break
    sleep 0.1
done
[ -s "$work/linkem1.pid" ] && [ -s "$work/linkem2.pid" ] || die "linkem did not start: $(cat "$work"/linkem*.log)"

log "making $size_mib MiB of random data"
mkdir -p "$work/share" "$work/out"
head -c $((size_mib * 1048576)) /dev/urandom >"$work/share/data.bin"
size=$(stat -c %s "$work/share/data.bin")

for who in S1 S2 C; do "$ferry" id --state "$work/$who" >/dev/null; done
node_id() { "$ferry" id --state "$work/$1" --json | sed -n 's/.*"id":"\([^"]*\)".*/\1/p'; }
id_c=$(node_id C)
for k in 1 2; do
    "$ferry" trust --state "$work/S$k" "$id_c" --name getter >/dev/null 2>&1
    "$ferry" trust --state "$work/C" "$(node_id "S$k")" --name "s$k" --address "198.18.4$k.2:7788" >/dev/null 2>&1
done
for k in 1 2; do
    ns_s=$ns_1 && [ "$k" = 2 ] && ns_s=$ns_2
    ip netns exec "$ns_s" "$ferry" serve --state "$work/S$k" --listen "198.18.4$k.2:7788" --no-discovery \
        --share "pub=$work/share" >"$work/serve$k.log" 2>&1 &
    pids+=($!)
    ip netns exec "$ns_s" iperf3 -s -D -B "198.18.4$k.2" >/dev/null 2>&1 || true
done
sleep 0.5

# Link ceiling: iperf3 over each link for 8 s, then both at once (receiver's Mbit/s).
iperf() { ip netns exec "$ns_c" iperf3 -c "$1" -t 8 -R -J 2>/dev/null |
    sed -n 's/.*"bits_per_second":[[:space:]]*\([0-9.e+]*\).*/\1/p' | tail -1 | awk '{ printf "%.1f", $1 / 1e6 }'; }
if command -v iperf3 >/dev/null; then
    i1=$(iperf 198.18.41.2)
    i2=$(iperf 198.18.42.2)
    iperf 198.18.41.2 >"$work/both1" &
    b1=$!
    iperf 198.18.42.2 >"$work/both2"
    wait "$b1"
    log "iperf3 -R (Mbit/s): link 1 $i1, link 2 $i2, both at once $(cat "$work/both1") + $(cat "$work/both2")"
fi

# get_run LABEL ARGS...: wall time of one get into a fresh folder; checks the bytes.
get_run() {
    local label=$1 t0 t1
    shift
    rm -rf "$work/out" && mkdir -p "$work/out"
    sync
    stamp
    t0=$ts
    ip netns exec "$ns_c" "$ferry" get --state "$work/C" --json "$@" "$work/out/" >"$work/get.json" 2>"$work/get.err" ||
        die "$label failed: $(tail -3 "$work/get.err")"
    stamp
    t1=$ts
    cmp -s "$work/share/data.bin" "$work/out/data.bin" || die "$label: the file differs"
    [ -z "${LOGS:-}" ] || { mkdir -p "$LOGS" && cp "$work/get.json" "$LOGS/$label-$r.json"; }
    local s
    s=$(sub "$t1" "$t0")
    printf '%s %s\n' "$label" "$s" >>"$work/times"
    log "$label: $s s ($(awk -v b="$size" -v s="$s" 'BEGIN { printf "%.1f", b * 8 / s / 1e6 }') Mbit/s of file)"
    if [ "$label" = multi ]; then
        grep '"event":"done"' "$work/get.json" | grep -o '"source":"[^"]*"[^}]*"ranges":[0-9]*' |
            sed 's/"source":"\([^"]*\)".*"ranges":\([0-9]*\)/  \1: \2 ranges/' >&2
    fi
}
for ((r = 1; r <= rounds; r++)); do
    peer=s1 && [ $((r % 2)) = 0 ] && peer=s2
    get_run single "$peer:pub/data.bin"
    get_run multi --from s1,s2 pub/data.bin
done
best() { awk -v l="$1" '$1 == l { if (m == "" || $2 < m) m = $2 } END { print m }' "$work/times"; }
single=$(best single)
multi=$(best multi)
echo
echo "multi-source get, $size_mib MiB, two links of $rate Mbit/s, RTT $((2 * delay)) ms, fastest of $rounds:"
printf '  one peer:  %8.2f s  %7.1f Mbit/s\n' "$single" "$(awk -v b="$size" -v s="$single" 'BEGIN { print b * 8 / s / 1e6 }')"
printf '  two peers: %8.2f s  %7.1f Mbit/s\n' "$multi" "$(awk -v b="$size" -v s="$multi" 'BEGIN { print b * 8 / s / 1e6 }')"
printf '  two peers / one peer: %.2fx\n' "$(awk -v a="$single" -v b="$multi" 'BEGIN { print a / b }')"
