#!/usr/bin/env bash
# Resume and fault-tolerance figures (issue 7), on loopback, with the release build:
#   1. kill -9 of the receiver, then of the sender, once the partial file holds half of a
#      SIZE file; the same send again. Prints what the resend put on the wire beyond the
#      bytes the receiver lacked (goal: <= 1% of the file).
#   2. the time from a connection reset from outside (ss -K) to its replacement carrying
#      data, from the sender's own log line (RUNS runs).
#   3. the transfer rate with one connection reset every KILL_EVERY seconds against the
#      same transfer undisturbed, alternating (RUNS runs each; fastest and median).
# Usage: bench/resume.sh [--size BYTES] [--runs N] [--kill-every SECONDS] [--parts 123]
# Data lives in /dev/shm (the source) and DEST_DIR (default: a folder in /dev/shm).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
ferry=${FERRY:-$repo/build/release/tools/ferry}
size=$((1024 * 1024 * 1024))
runs=3
kill_every=5
parts="123"
while [ $# -gt 0 ]; do
    case $1 in
        --size) size=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --kill-every) kill_every=$2; shift 2 ;;
        --parts) parts=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 1 ;;
    esac
done
[ -x "$ferry" ] || { echo "no $ferry: run make first" >&2; exit 1; }
command -v ss > /dev/null || { echo "needs ss (iproute2)" >&2; exit 1; }

work=$(mktemp -d /dev/shm/ferry-resume-bench.XXXXXX)
dest=${DEST_DIR:-$work/dest}
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2> /dev/null || true; done
    rm -rf "$work"
    [ -z "${DEST_DIR:-}" ] || rm -rf "$dest"
}
trap cleanup EXIT
log() { printf 'resume-bench: %s\n' "$*" >&2; }

A=$("$ferry" id --state "$work/A")
B=$("$ferry" id --state "$work/B")
"$ferry" trust --state "$work/A" "$B" > /dev/null 2>&1
log "making a $size-byte random file"
head -c "$size" /dev/urandom > "$work/big.bin"
port=$((20000 + RANDOM % 20000))

start_serve() {
    "$ferry" serve --no-discovery --state "$work/A" --listen "127.0.0.1:$port" --inbox "$dest" --json > "$work/serve.out" 2> "$work/serve.err" &
    serve_pid=$!
    pids+=("$serve_pid")
    for _ in $(seq 1 200); do
        grep -q listening "$work/serve.out" 2> /dev/null && return 0
        sleep 0.02
    done
    echo "serve did not start: $(cat "$work/serve.err")" >&2
    exit 1
}
stop_serve() { kill "$serve_pid" 2> /dev/null || true; wait "$serve_pid" 2> /dev/null || true; }
part_bytes() { local b; b=$(stat -c %b "$dest/.big.bin.ferry-part" 2> /dev/null || echo 0); echo $((b * 512)); }
field() { grep '"event":"done"' "$1" | tail -1 | sed -n "s/.*\"$2\":\\([0-9.]*\\).*/\\1/p"; }
send_bg() { "$ferry" send --state "$work/B" --json "$@" "$work/big.bin" "$A@127.0.0.1:$port" > "$work/send.out" 2> "$work/send.err" & send_pid=$!; pids+=("$send_pid"); }
wait_half() {
    for _ in $(seq 1 3000); do
        [ "$(part_bytes)" -ge $((size / 2)) ] && return 0
        sleep 0.005
    done
    echo "the partial file never reached half" >&2
    exit 1
}

if [[ $parts == *1* ]]; then
echo "== kill -9 at half of $size bytes, then the same send again"
printf '%-9s %14s %14s %14s %14s %9s\n' killed at_kill kept resent_wire missing beyond_%
for who in receiver sender; do
    for r in $(seq 1 "$runs"); do
        rm -rf "$dest"; mkdir -p "$dest"
        start_serve
        send_bg --retry-for 0
        wait_half
        if [ $who = receiver ]; then kill -9 "$serve_pid"; else kill -9 "$send_pid"; fi
        at_kill=$(part_bytes)
        wait "$send_pid" 2> /dev/null || true
        stop_serve
        sync
        start_serve
        "$ferry" send --state "$work/B" --json "$work/big.bin" "$A@127.0.0.1:$port" > "$work/resend.out" 2> "$work/resend.err" ||
            { echo "resend failed: $(cat "$work/resend.err")" >&2; exit 1; }
        stop_serve
        cmp -s "$work/big.bin" "$dest/big.bin" || { echo "NOT IDENTICAL" >&2; exit 1; }
        kept=$(field "$work/resend.out" resumed_bytes)
        wire=$(field "$work/resend.out" wire_bytes_sent)
        missing=$((size - at_kill))
        printf '%-9s %14d %14d %14d %14d %9.3f\n' $who "$at_kill" "$kept" "$wire" "$missing" \
            "$(awk -v w="$wire" -v m="$missing" -v s="$size" 'BEGIN { print 100 * (w - m) / s }')"
    done
done

fi
if [[ $parts == *2* ]]; then
echo
echo "== a connection reset from outside (ss -K): time until its replacement carries data"
rm -rf "$dest"; mkdir -p "$dest"
start_serve
times=()
for r in $(seq 1 "$runs"); do
    rm -f "$dest/big.bin"
    send_bg --connections 4
    sleep 0.3
    # The newest established connection to the serve port: a data connection.
    peer=$(ss -Htn state established "( sport = :$port )" | awk '{ print $4 }' | sed 's/.*://' | sort -n | tail -1)
    ss -K state established "( sport = :$port and dport = :$peer )" > /dev/null 2>&1 || true
    wait "$send_pid"
    t=$(sed -n 's/.*is back and carrying data, \([0-9]*\) ms.*/\1/p' "$work/send.err" | head -1)
    times+=("${t:-none}")
done
stop_serve
echo "replacement carrying data after (ms): ${times[*]}"
fi
[[ $parts == *3* ]] || exit 0

echo
echo "== one connection reset every $kill_every s against undisturbed, alternating"
rate() { awk -v b="$size" -v s="$(field "$1" elapsed_s)" 'BEGIN { printf "%.1f", b / s / 1e6 }'; }
calm=() hit=()
rm -rf "$dest"; mkdir -p "$dest"
start_serve
for r in $(seq 1 "$runs"); do
    for mode in calm hit; do
        rm -f "$dest/big.bin"; sync
        send_bg --retry-for 5m
        kills=0
        if [ $mode = hit ]; then
            while alive=$(kill -0 "$send_pid" 2> /dev/null && echo y); [ -n "$alive" ]; do
                sleep "$kill_every"
                kill -0 "$send_pid" 2> /dev/null || break
                peer=$(ss -Htn state established "( sport = :$port )" | awk '{ print $4 }' | sed 's/.*://' | shuf -n 1)
                [ -n "$peer" ] && ss -K state established "( sport = :$port and dport = :$peer )" > /dev/null 2>&1 && kills=$((kills + 1))
            done
        fi
        wait "$send_pid"
        cmp -s "$work/big.bin" "$dest/big.bin" || { echo "NOT IDENTICAL" >&2; exit 1; }
        if [ $mode = calm ]; then calm+=("$(rate "$work/send.out")"); else hit+=("$(rate "$work/send.out")"); fi
        [ $mode = hit ] && echo "run $r: $kills connection(s) reset; $(grep -c 'lost' "$work/send.err" || true) loss line(s)"
    done
done
stop_serve
best() { printf '%s\n' "$@" | sort -g | tail -1; }
med() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "undisturbed MB/s: ${calm[*]}"
echo "disturbed   MB/s: ${hit[*]}"
awk -v a="$(best "${hit[@]}")" -v b="$(best "${calm[@]}")" -v c="$(med "${hit[@]}")" -v d="$(med "${calm[@]}")" \
    'BEGIN { printf "ratio disturbed/undisturbed: fastest %.2f, median %.2f\n", a / b, c / d }'
