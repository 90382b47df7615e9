#!/usr/bin/env bash
# Sends a sample folder between two local ferry nodes over loopback and checks that the
# received copy is byte-identical.
#
#   usage: scripts/demo.sh FERRY_BIN
#
# Everything happens in a temporary folder that is removed on exit. Environment:
#   FERRY_DEMO_BIG_MIB   size of sample/big.bin in MiB (default 160)
#   FERRY_DEMO_TIMEOUT   seconds allowed for the transfer (default 300)
#   FERRY_DEMO_KEEP=1    keep the temporary folder (its path is printed)
set -euo pipefail

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: FAILED: %s\n' "$*" >&2; exit 1; }

if [ $# -ne 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    echo "usage: $0 FERRY_BIN" >&2
    exit 1
fi
ferry=$1
case $ferry in /*) ;; *) ferry=$PWD/$ferry ;; esac
[ -x "$ferry" ] || die "$ferry is not an executable (run 'make build' first)"

big_mib=${FERRY_DEMO_BIG_MIB:-160}
xfer_timeout=${FERRY_DEMO_TIMEOUT:-300}

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-demo.XXXXXX")
receiver_pid=

cleanup() {
    local rc=$?
    if [ -n "$receiver_pid" ] && kill -0 "$receiver_pid" 2>/dev/null; then
        kill "$receiver_pid" 2>/dev/null || true
        wait "$receiver_pid" 2>/dev/null || true
    fi
    if [ "${FERRY_DEMO_KEEP:-0}" = 1 ]; then
        say "kept $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

state_a=$work/A        # receiver
state_b=$work/B        # sender
sample=$work/sample
inbox=$work/inbox
mkdir -p "$inbox"   # the state folders are left for ferry to create

# ---- identities ----------------------------------------------------------------------
id_a=$("$ferry" id --state "$state_a" | tail -n 1 | tr -d '[:space:]') || die "ferry id --state A failed"
id_b=$("$ferry" id --state "$state_b" | tail -n 1 | tr -d '[:space:]') || die "ferry id --state B failed"
if [ -z "$id_a" ] || [ -z "$id_b" ]; then die "ferry id printed nothing"; fi
say "receiver A is $id_a"
say "sender   B is $id_b"

# ---- sample folder -------------------------------------------------------------------
say "creating sample folder ($big_mib MiB of random data plus small files) in $work"
avail_kib=$(df -Pk "$work" | awk 'NR == 2 { print $4 }')
need_kib=$(( (2 * big_mib + 16) * 1024 ))
[ "$avail_kib" -ge "$need_kib" ] || die "need $((need_kib / 1024)) MiB free in $work, have $((avail_kib / 1024)) MiB"

mkdir -p "$sample/docs/notes" "$sample/empty-dir"
printf 'Hello from ferry.\n' > "$sample/hello.txt"
printf '# Sample\n\nA folder that ferry carries from node B to node A.\n' > "$sample/README.md"
seq 1 1000 | awk '{ print $1 "," $1 * $1 }' > "$sample/squares.csv"
printf 'ship the demo\nthen the benchmark\n' > "$sample/docs/notes/todo.txt"
printf 'Notes live here.\n' > "$sample/docs/index.txt"
: > "$sample/empty.txt"
printf 'unicode name\n' > "$sample/résumé-日本語-Ω.txt"
head -c "$((big_mib * 1024 * 1024))" /dev/urandom > "$sample/big.bin"

files=$(find "$sample" -type f | wc -l)
bytes=$(find "$sample" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')

# ---- receiver ------------------------------------------------------------------------
say "starting receiver A on 127.0.0.1 (any free port), accepting only B"
"$ferry" receive --state "$state_a" --listen 127.0.0.1:0 --accept-from "$id_b" --json "$inbox" \
    > "$work/receiver.out" 2> "$work/receiver.err" &
receiver_pid=$!

show_receiver_logs() {
    echo "---- receiver stdout ----" >&2; cat "$work/receiver.out" >&2 || true
    echo "---- receiver stderr ----" >&2; cat "$work/receiver.err" >&2 || true
}

# Wait (at most 30 s) for the first complete stdout line: the "listening" event.
line=
for _ in $(seq 1 300); do
    if [ "$(wc -l < "$work/receiver.out")" -ge 1 ]; then
        line=$(head -n 1 "$work/receiver.out")
        break
    fi
    if ! kill -0 "$receiver_pid" 2>/dev/null; then
        show_receiver_logs
        die "receiver exited before listening"
    fi
    sleep 0.1
done
if [ -z "$line" ]; then
    show_receiver_logs
    die "receiver did not report listening within 30 s"
fi
address=$(printf '%s\n' "$line" | grep '"event": *"listening"' | sed -n 's/.*"address": *"\([^"]*\)".*/\1/p' || true)
listen_id=$(printf '%s\n' "$line" | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p')
if [ -z "$address" ]; then
    show_receiver_logs
    die "could not read the address from the receiver's first line: $line"
fi
if [ "$listen_id" != "$id_a" ]; then
    say "warning: receiver reports id '$listen_id', ferry id said '$id_a'"
fi
say "receiver listening on $address"

# ---- send ----------------------------------------------------------------------------
say "sending $sample ($files files, $bytes bytes) from B to $id_a@$address"
send_rc=0
timeout --foreground "$xfer_timeout" "$ferry" send --state "$state_b" "$sample" "$id_a@$address" || send_rc=$?
if [ "$send_rc" -ne 0 ]; then
    show_receiver_logs
    [ "$send_rc" -eq 124 ] && die "send did not finish within $xfer_timeout s"
    die "ferry send exited with $send_rc"
fi

# ---- receiver exit -------------------------------------------------------------------
say "waiting for the receiver to finish"
for _ in $(seq 1 300); do
    kill -0 "$receiver_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$receiver_pid" 2>/dev/null; then
    show_receiver_logs
    die "receiver still running 30 s after the send finished"
fi
recv_rc=0
wait "$receiver_pid" || recv_rc=$?
receiver_pid=
if [ "$recv_rc" -ne 0 ]; then
    show_receiver_logs
    die "ferry receive exited with $recv_rc"
fi

# ---- verify --------------------------------------------------------------------------
say "comparing $sample with $inbox/sample"
[ -d "$inbox/sample" ] || { show_receiver_logs; die "$inbox/sample does not exist"; }
if ! diff -r "$sample" "$inbox/sample" >&2; then
    die "received folder differs from the sample (see above)"
fi
got_files=$(find "$inbox/sample" -type f | wc -l)
[ "$got_files" -eq "$files" ] || die "received $got_files files, sent $files"
[ -d "$inbox/sample/empty-dir" ] || die "empty-dir was not received"

echo "demo: OK — received folder is byte-identical ($files files, $bytes bytes)"
