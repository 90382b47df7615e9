#!/usr/bin/env bash
# `ferry sync` figures (issue 8) on loopback, release build, against rsync -a to an
# rsync daemon measured in the same run, tools alternating round by round:
#   1. first sync of FILES x 4 KiB files (fastest and median of ROUNDS);
#   2. no-change resync of the same tree;
#   2b. the same two the other way: a pull of the share's copy into a new local folder
#      (`ferry sync ay:s/tree DIR` against `rsync -a rsync://.../r/tree/ DIR/`);
#   3. a SIZE file with 1 MiB overwritten in place, then with 1 byte inserted at offset 0:
#      bytes on the loopback interface (its kernel counters, both directions) and time,
#      against reading and hashing the file once (xxhsum -H2, XXH128);
#   4. files of each of DELTA_SIZES MiB with 1 or 20 overwrites of 100 bytes or
#      insertions of 10 bytes (seeded places, the same for both tools): bytes on the
#      loopback interface of the resync, ferry (--compress never) and rsync -a. The
#      interface's counters count whatever else uses it: run on an idle machine.
# Usage: bench/sync.sh [--files N] [--size BYTES] [--rounds N] [--delta-sizes "1 4 16 64"]
# Data lives in a folder of /dev/shm, removed at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
ferry=${FERRY:-$repo/build/release/tools/ferry}
files=10000
size=$((1024 * 1024 * 1024))
rounds=5
delta_sizes="1 4 16 64"
while [ $# -gt 0 ]; do
    case $1 in
        --files) files=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --delta-sizes) delta_sizes=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 1 ;;
    esac
done
[ -x "$ferry" ] || { echo "no $ferry: run make first" >&2; exit 1; }
for tool in rsync xxhsum; do
    command -v "$tool" > /dev/null || { echo "needs $tool (scripts/install-deps.sh --bench)" >&2; exit 1; }
done

work=$(mktemp -d /dev/shm/ferry-sync-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    wait 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
log() { printf 'sync-bench: %s\n' "$*" >&2; }
now() { date +%s.%N; }
# (From /proc/net/dev, which is this network namespace's: /sys may show another's.)
lo_bytes() { sed -n 's/^ *lo: *//p' /proc/net/dev | awk '{ print $9 }'; }

mkdir -p "$work/share" "$work/rsync" "$work/src/tree" "$work/src/big" "$work/pull" "$work/rpull"
A=$("$ferry" id --state "$work/A")
B=$("$ferry" id --state "$work/B")
"$ferry" trust --state "$work/A" "$B" --name bee > /dev/null 2>&1
"$ferry" serve --no-discovery --state "$work/A" --listen "127.0.0.1:0" --inbox "$work/inbox" \
    --share "s=$work/share:rw" --json > "$work/serve.out" 2> "$work/serve.err" &
pids+=($!)
cat > "$work/rsyncd.conf" << CONF
use chroot = no
uid = root
gid = root
[r]
path = $work/rsync
read only = no
CONF
rport=$((20000 + RANDOM % 10000))  # below the ephemeral range
rsync --daemon --no-detach --config="$work/rsyncd.conf" --address=127.0.0.1 --port="$rport" \
    --log-file="$work/rsyncd.log" 2> "$work/rsyncd.err" &
pids+=($!)
for _ in $(seq 1 200); do
    grep -q listening "$work/serve.out" 2> /dev/null && ss -ltn | grep -q ":$rport " && break
    sleep 0.02
done
address=$(sed -n 's/.*"address": *"\([^"]*\)".*/\1/p' "$work/serve.out" | head -1)
[ -n "$address" ] || { log "ferry serve did not start: $(cat "$work/serve.err")"; exit 1; }
"$ferry" trust --state "$work/B" "$A" --name ay --address "$address" > /dev/null 2>&1

log "making $files x 4 KiB files and a $size-byte file"
for ((i = 0; i < files; i += 100)); do  # 100 files per folder, one split per folder
    d=$(printf '%s/src/tree/d%04d' "$work" $((i / 100)))
    n=$((files - i < 100 ? files - i : 100))
    mkdir -p "$d"
    head -c $((n * 4096)) /dev/urandom | split -b 4096 -a 2 -d - "$d/f"
done
head -c "$size" /dev/urandom > "$work/src/big/big.bin"

ferry_sync() { "$ferry" sync --state "$work/B" -q --json "$@" > "$work/sync.out" 2> "$work/sync.err" || {
    cat "$work/sync.err" >&2; exit 1; }; }
rsync_to() { rsync -a "$1/" "rsync://127.0.0.1:$rport/r/$2/"; }
# times LIST...: "fastest median" of the numbers
times() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.3f %.3f", v[1], v[int((NR + 1) / 2)] }'; }

rsync_from() { rsync -a "rsync://127.0.0.1:$rport/r/$1/" "$2/"; }
declare -a f_first r_first f_same r_same fp_first rp_first fp_same rp_same
for ((r = 0; r < rounds; r++)); do
    rm -rf "$work/share/tree" "$work/rsync/tree"
    sync; t0=$(now); ferry_sync "$work/src/tree" ay:s/tree; f_first+=("$(echo "$(now) - $t0" | bc)")
    sync; t0=$(now); rsync_to "$work/src/tree" tree; r_first+=("$(echo "$(now) - $t0" | bc)")
    sync; t0=$(now); ferry_sync "$work/src/tree" ay:s/tree; f_same+=("$(echo "$(now) - $t0" | bc)")
    sync; t0=$(now); rsync_to "$work/src/tree" tree; r_same+=("$(echo "$(now) - $t0" | bc)")
    rm -rf "$work/pull/tree" "$work/rpull/tree"
    sync; t0=$(now); ferry_sync ay:s/tree "$work/pull/tree"; fp_first+=("$(echo "$(now) - $t0" | bc)")
    sync; t0=$(now); rsync_from tree "$work/rpull/tree"; rp_first+=("$(echo "$(now) - $t0" | bc)")
    sync; t0=$(now); ferry_sync ay:s/tree "$work/pull/tree"; fp_same+=("$(echo "$(now) - $t0" | bc)")
    sync; t0=$(now); rsync_from tree "$work/rpull/tree"; rp_same+=("$(echo "$(now) - $t0" | bc)")
done
diff -r "$work/src/tree" "$work/pull/tree" > /dev/null || { log "FAILED: the pulled tree differs"; exit 1; }
diff -r "$work/src/tree" "$work/share/tree" > /dev/null || { log "FAILED: the synced tree differs"; exit 1; }
read -r ff fm <<< "$(times "${f_first[@]}")"; read -r rf rm_ <<< "$(times "${r_first[@]}")"
read -r sf sm <<< "$(times "${f_same[@]}")"; read -r qf qm <<< "$(times "${r_same[@]}")"
printf '%-44s %10s %10s %10s %10s %8s\n' "case ($rounds rounds)" "ferry min" "ferry med" "rsync min" "rsync med" "speedup"
printf '%-44s %10s %10s %10s %10s %7.2fx\n' "first sync, $files x 4 KiB" "$ff" "$fm" "$rf" "$rm_" "$(echo "$rf / $ff" | bc -l)"
printf '%-44s %10s %10s %10s %10s %7.2fx\n' "no-change resync, $files files" "$sf" "$sm" "$qf" "$qm" "$(echo "$qf / $sf" | bc -l)"
read -r pf pm <<< "$(times "${fp_first[@]}")"; read -r qpf qpm <<< "$(times "${rp_first[@]}")"
read -r nf nm <<< "$(times "${fp_same[@]}")"; read -r rnf rnm <<< "$(times "${rp_same[@]}")"
printf '%-44s %10s %10s %10s %10s %7.2fx\n' "pull, first, $files x 4 KiB" "$pf" "$pm" "$qpf" "$qpm" "$(echo "$qpf / $pf" | bc -l)"
printf '%-44s %10s %10s %10s %10s %7.2fx\n' "pull, no change, $files files" "$nf" "$nm" "$rnf" "$rnm" "$(echo "$rnf / $nf" | bc -l)"

# The big file: first sync, then the edits (each measured once: the edit is the state).
ferry_sync "$work/src/big" ay:s/big
big=$work/src/big/big.bin
delta() {  # delta LABEL: resync after an edit; prints wire bytes and time vs read+hash
    local label=$1 b0 b1 t0 t1 h0 h1
    sync; h0=$(now); xxhsum -H2 "$big" > /dev/null 2>&1; h1=$(now)
    sync; b0=$(lo_bytes); t0=$(now); ferry_sync --compress never "$work/src/big" ay:s/big; t1=$(now); b1=$(lo_bytes)
    cmp "$big" "$work/share/big/big.bin" || { log "FAILED: $label: the synced file differs"; exit 1; }
    local sent; sent=$(tail -n 1 "$work/sync.out" | sed -n 's/.*"bytes_transferred":\([0-9]*\).*/\1/p')
    printf '%-44s wire %8.2f MiB (payload %8.2f MiB), %.3f s = %.2fx read+hash (%.3f s)\n' "$label" \
        "$(echo "($b1 - $b0) / 1048576" | bc -l)" "$(echo "$sent / 1048576" | bc -l)" "$(echo "$t1 - $t0" | bc)" \
        "$(echo "($t1 - $t0) / ($h1 - $h0)" | bc -l)" "$(echo "$h1 - $h0" | bc)"
}
head -c 1048576 /dev/urandom | dd of="$big" bs=1M seek=$((size / 2 / 1048576)) conv=notrunc status=none
delta "$((size / 1048576)) MiB file, 1 MiB changed in place"
{ printf 'x'; cat "$big"; } > "$big.new" && touch -r "$big" "$big.new" && mv "$big.new" "$big"
touch "$big"
delta "$((size / 1048576)) MiB file, 1 byte inserted at 0"
# 4. Edits to files of several sizes: bytes of the resync, against rsync's.
# edit FILE KIND N SEED: N overwrites of 100 bytes (over) or insertions of 10 bytes (ins)
edit() {
    local f=$1 kind=$2 n=$3 seed=$4 size pos
    size=$(stat -c %s "$f")
    for pos in $(awk -v n="$n" -v s="$size" -v seed="$seed" \
        'BEGIN { srand(seed); for (i = 0; i < n; i++) print int(rand() * (s - 200)) }' | sort -rn); do
        if [ "$kind" = over ]; then
            head -c 100 /dev/urandom | dd of="$f" bs=100 seek="$pos" oflag=seek_bytes conv=notrunc status=none
        else
            { head -c "$pos" "$f"; head -c 10 /dev/urandom; tail -c +$((pos + 1)) "$f"; } > "$f.new"
            mv "$f.new" "$f"
        fi
    done
}
[ -n "$delta_sizes" ] && printf '%-44s %10s %10s %8s\n' "edits (bytes on lo)" "ferry" "rsync -a" "ratio"
stamp=1600000000
for mib in $delta_sizes; do
    for e in "over 1" "ins 1" "over 20" "ins 20"; do
        read -r kind n <<< "$e"
        rm -rf "$work/ed" && mkdir -p "$work/ed/f" "$work/ed/r"
        head -c $((mib * 1048576)) /dev/urandom > "$work/ed/f/file"
        cp "$work/ed/f/file" "$work/ed/r/file"
        touch -d "@$stamp" "$work/ed/f/file" "$work/ed/r/file"
        ferry_sync "$work/ed/f" ay:s/ed
        rsync_to "$work/ed/r" ed
        edit "$work/ed/f/file" "$kind" "$n" "$stamp"
        cp "$work/ed/f/file" "$work/ed/r/file"
        # (A new mtime for both: rsync's quick check would miss an edit within its second.)
        touch -d "@$((stamp + 5))" "$work/ed/f/file" "$work/ed/r/file"
        stamp=$((stamp + 10))
        b0=$(lo_bytes); ferry_sync --compress never "$work/ed/f" ay:s/ed; b1=$(lo_bytes)
        rsync_to "$work/ed/r" ed; b2=$(lo_bytes)
        cmp -s "$work/ed/f/file" "$work/share/ed/file" || { log "FAILED: $mib MiB, $e: ferry's file differs"; exit 1; }
        cmp -s "$work/ed/r/file" "$work/rsync/ed/file" || { log "FAILED: $mib MiB, $e: rsync's file differs"; exit 1; }
        printf '%-44s %10d %10d %7.2fx\n' "$mib MiB file, $n x $kind" $((b1 - b0)) $((b2 - b1)) \
            "$(echo "($b1 - $b0) / ($b2 - $b1)" | bc -l)"
    done
done
rm -rf "$work/ed"
log "machine: $(nproc) cores, $(uname -r); ferry $(git -C "$repo" rev-parse --short HEAD 2> /dev/null || echo '?')"
