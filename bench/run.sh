#!/usr/bin/env bash
# Loopback benchmark: ferry against plain nc (one big file) and tar|nc (many small files).
#
#   bench/run.sh [--rounds N] [--size-mib N] [--files N] [--connections N] [--quick]
#                [--ferry PATH] [--baseline-only] [--no-plaintext] [--no-warm] [--record] [--keep]
#
# Data lives in a fresh folder under /dev/shm (page-cache backed, so the disk is not what
# is measured). Each case runs N rounds with the tools alternating (A B C A B C ...); before
# every timed run the destination is emptied and `sync` runs. A run is timed from the start
# of the sender until both sender and receiver have exited, so connection set-up (and the
# TLS handshake) is included for every tool. Each tool's result is verified once per case,
# outside the timing. Only 127.0.0.1 is used; every wait is bounded.
#
# --record appends the report (machine, date, commands, table, raw times) to
# bench/RESULTS.md. MB/s means 10^6 payload bytes per second.
set -euo pipefail
export LC_ALL=C

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    cat <<'EOF'

Options:
  --rounds N        timed runs per tool and case (default 5)
  --size-mib N      size of the single file in MiB (default 1024)
  --files N         number of 4 KiB files in the tree case (default 10000)
  --connections N   ferry --connections (default 4)
  --quick           smoke run: 16 MiB file, 200 files, 1 round, no warm-up
  --ferry PATH      ferry binary (default $FERRY_BIN or build/release/tools/ferry)
  --baseline-only   run only nc and tar|nc (no ferry binary needed)
  --no-plaintext    skip the ferry --plaintext runs
  --no-warm         skip the once-per-boot /dev/shm warm-up
  --record          append the report to bench/RESULTS.md
  --keep            keep the data folder under /dev/shm
EOF
}

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: FAILED: %s\n' "$*" >&2; exit 1; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ]; }

rounds='' size_mib='' nfiles='' connections=4 quick=0 baseline_only=0 plaintext=1 warm=1 record=0 keep=0
ferry=${FERRY_BIN:-$repo/build/release/tools/ferry}
args_given=$*
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=${2:-}; shift 2 ;;
        --size-mib) size_mib=${2:-}; shift 2 ;;
        --files) nfiles=${2:-}; shift 2 ;;
        --connections) connections=${2:-}; shift 2 ;;
        --ferry) ferry=${2:-}; shift 2 ;;
        --quick) quick=1; shift ;;
        --baseline-only) baseline_only=1; shift ;;
        --no-plaintext) plaintext=0; shift ;;
        --no-warm) warm=0; shift ;;
        --record) record=1; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
if [ "$quick" = 1 ]; then
    : "${rounds:=1}" "${size_mib:=16}" "${nfiles:=200}"
    warm=0
fi
: "${rounds:=5}" "${size_mib:=1024}" "${nfiles:=10000}"
for v in rounds size_mib nfiles connections; do
    is_uint "${!v}" || die "--${v//_/-} needs a positive integer, got '${!v}'"
done

file_kib=4
big_bytes=$((size_mib * 1024 * 1024))
tree_bytes=$((nfiles * file_kib * 1024))
run_timeout=600          # seconds any single transfer (or listener) may take
listen_wait_polls=3000   # x 10 ms = 30 s for a receiver to report it is listening

# ---- requirements --------------------------------------------------------------------
for tool in nc tar timeout awk split sync; do
    command -v "$tool" >/dev/null || die "$tool is not installed (make deps)"
done
nc -h 2>&1 | grep -q OpenBSD || die "nc must be netcat-openbsd (needs -N, -d)"
if [ "$baseline_only" = 0 ]; then
    case $ferry in /*) ;; *) ferry=$PWD/$ferry ;; esac
    [ -x "$ferry" ] || die "ferry binary not found at $ferry (make build, or --baseline-only)"
fi
if [ ! -d /dev/shm ] || [ ! -w /dev/shm ]; then die "/dev/shm is not a writable folder"; fi

# ---- space and memory ----------------------------------------------------------------
mib() { echo $(( ($1 + 1048575) / 1048576 )); }
shm_avail() { df -Pk /dev/shm | awk 'NR == 2 { printf "%.0f\n", $4 * 1024 }'; }
mem_avail() { awk '$1 == "MemAvailable:" { printf "%.0f\n", $2 * 1024 }' /proc/meminfo; }
need=$(( 2 * big_bytes + 2 * tree_bytes + 64 * 1048576 ))   # source + one destination copy
[ "$(shm_avail)" -ge "$need" ] ||
    die "need $(mib "$need") MiB free in /dev/shm, have $(mib "$(shm_avail)") MiB"
[ "$(mem_avail)" -ge $(( need + 512 * 1048576 )) ] ||
    die "need $(mib $(( need + 512 * 1048576 ))) MiB of available memory, have $(mib "$(mem_avail)") MiB"

# ---- once-per-boot warm-up -----------------------------------------------------------
# The first multi-GiB write into tmpfs after boot pays for page allocation (and THP
# compaction) that later runs do not; do it once, up front, so round 1 is not penalized.
warm_marker=/dev/shm/.ferry-warm
warm_bytes=$((8 * 1024 * 1048576))
if [ "$warm" = 0 ]; then
    log "warm-up skipped"
elif [ -e "$warm_marker" ]; then
    log "warm-up already done this boot ($warm_marker exists)"
elif [ "$(shm_avail)" -ge $(( warm_bytes + need )) ] &&
     [ "$(mem_avail)" -ge $(( warm_bytes + need + 1024 * 1048576 )) ]; then
    log "warm-up: writing 8 GiB to /dev/shm and deleting it (once per boot)"
    warm_file=$(mktemp /dev/shm/.ferry-warm-fill.XXXXXX)
    dd if=/dev/zero of="$warm_file" bs=1M count=8192 status=none || { rm -f "$warm_file"; die "warm-up write failed"; }
    rm -f "$warm_file"
    touch "$warm_marker"
    log "warm-up: done ($warm_marker created)"
else
    log "warm-up skipped: not enough free memory for 8 GiB in /dev/shm"
fi

# ---- work folder, cleanup ------------------------------------------------------------
data=$(mktemp -d /dev/shm/ferry-bench.XXXXXX)
src=$data/src
dst=$data/dst
logs=$data/logs
bg_pids=()

cleanup() {
    local rc=$? pid
    for pid in "${bg_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${bg_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$keep" = 1 ]; then
        log "kept $data"
    else
        rm -rf "$data"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$src" "$dst" "$logs"

# ---- data ----------------------------------------------------------------------------
log "creating $size_mib MiB random file and $nfiles x $file_kib KiB random files in $data"
big=$src/big.bin
head -c "$big_bytes" /dev/urandom > "$big"
# The tree: folders of up to 100 files, each file 4 KiB of its own random bytes.
left=$nfiles d=0
while [ "$left" -gt 0 ]; do
    n=$(( left < 100 ? left : 100 ))
    dir=$(printf '%s/tree/d%04d' "$src" "$d")
    mkdir -p "$dir"
    head -c $(( n * file_kib * 1024 )) /dev/urandom | split -b $((file_kib * 1024)) -a 3 -d - "$dir/f"
    left=$(( left - n )) d=$(( d + 1 ))
done
[ "$(find "$src/tree" -type f | wc -l)" -eq "$nfiles" ] || die "tree generation produced the wrong number of files"

# ---- helpers -------------------------------------------------------------------------
# stamp: sets $ts to the current time in seconds (EPOCHREALTIME avoids forking date).
stamp() { if [ -n "${EPOCHREALTIME:-}" ]; then ts=$EPOCHREALTIME; else ts=$(date +%s.%N); fi; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a - b }'; }

reset_dest() { rm -rf "$dst" "$logs"; mkdir -p "$dst" "$logs"; }   # and the last run's logs

# port_listening PORT: true if something listens on TCP PORT (IPv4 or IPv6).
port_listening() {
    local hex
    hex=$(printf ':%04X' "$1")
    awk -v p="$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

alive() { kill -0 "$1" 2>/dev/null; }

show_logs() {
    local f
    for f in "$logs"/*; do
        [ -s "$f" ] || continue
        printf -- '---- %s ----\n' "${f##*/}" >&2
        tail -n 40 "$f" >&2
    done
}

# start_nc MODE: start an nc listener on a random free port in 20000-40000 on 127.0.0.1.
# MODE file: write the stream to $dst/big.bin. MODE tar: unpack the stream into $dst.
# Sets nc_port and listener_pids.
start_nc() {
    local mode=$1 attempt port pid
    for attempt in $(seq 1 20); do
        port=$(( 20000 + RANDOM % 20001 ))
        port_listening "$port" && continue
        listener_pids=()
        if [ "$mode" = file ]; then
            timeout -k 5 "$run_timeout" nc -d -l 127.0.0.1 "$port" > "$dst/big.bin" 2> "$logs/nc-listen.err" &
            listener_pids+=("$!")
        else
            rm -f "$data/fifo"
            mkfifo "$data/fifo"
            timeout -k 5 "$run_timeout" nc -d -l 127.0.0.1 "$port" > "$data/fifo" 2> "$logs/nc-listen.err" &
            listener_pids+=("$!")
            # -B: reblock short reads from the pipe (GNU tar only does this by itself for stdin)
            timeout -k 5 "$run_timeout" tar -C "$dst" -B -xf - < "$data/fifo" 2> "$logs/tar-x.err" &
            listener_pids+=("$!")
        fi
        bg_pids=("${listener_pids[@]}")
        for _ in $(seq 1 500); do   # 5 s
            if port_listening "$port"; then
                nc_port=$port
                return 0
            fi
            alive "${listener_pids[0]}" || break
            sleep 0.01
        done
        log "nc listener on port $port did not come up (attempt $attempt), retrying"
        for pid in "${listener_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
        for pid in "${listener_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
        bg_pids=()
    done
    show_logs
    die "could not start an nc listener on 127.0.0.1 after 20 attempts"
}

# wait_all PID...: wait for each (bounded: each runs under timeout); fail with logs if one
# exited non-zero. Waited-for processes are dropped from bg_pids (their ids may be reused).
wait_all() {
    local pid rc
    for pid in "$@"; do
        rc=0
        wait "$pid" || rc=$?
        if [ "$rc" -ne 0 ]; then
            show_logs
            if [ "$rc" -eq 124 ]; then die "a receiver did not finish within $run_timeout s"; fi
            die "a receiver exited with status $rc"
        fi
    done
    bg_pids=()
}

# Each run_* function does one timed transfer and sets $elapsed (seconds).
run_nc_file() {
    reset_dest
    start_nc file
    sync
    stamp; local t0=$ts rc=0
    timeout "$run_timeout" nc -N 127.0.0.1 "$nc_port" < "$big" 2> "$logs/nc-send.err" || rc=$?
    [ "$rc" -eq 0 ] || { show_logs; die "nc sender exited with status $rc"; }
    wait_all "${listener_pids[@]}"
    stamp; elapsed=$(sub "$ts" "$t0")
}

run_tar_nc() {
    reset_dest
    start_nc tar
    sync
    stamp; local t0=$ts rc=0
    { tar -C "$src" -cf - tree | timeout "$run_timeout" nc -N 127.0.0.1 "$nc_port"; } 2> "$logs/tar-nc-send.err" || rc=$?
    [ "$rc" -eq 0 ] || { show_logs; die "tar | nc sender exited with status $rc"; }
    wait_all "${listener_pids[@]}"
    stamp; elapsed=$(sub "$ts" "$t0")
}

# run_ferry PLAIN PATH: PLAIN is 1 for --plaintext on both sides.
ferry_said=
run_ferry() {
    local plain=$1 path=$2 flags=() recv_pid line addr t0 rc=0
    if [ "$plain" = 1 ]; then flags=(--plaintext); fi
    reset_dest
    : > "$logs/ferry-receive.out"
    timeout -k 5 "$run_timeout" "$ferry" receive --state "$data/state-A" --listen 127.0.0.1:0 \
        --accept-from "$id_b" --json "${flags[@]}" "$dst" \
        > "$logs/ferry-receive.out" 2> "$logs/ferry-receive.err" &
    recv_pid=$!
    bg_pids=("$recv_pid")
    line=
    for _ in $(seq 1 "$listen_wait_polls"); do
        if [ "$(wc -l < "$logs/ferry-receive.out")" -ge 1 ]; then
            line=$(head -n 1 "$logs/ferry-receive.out")
            break
        fi
        alive "$recv_pid" || break
        sleep 0.01
    done
    addr=$(printf '%s\n' "$line" | grep '"event": *"listening"' | sed -n 's/.*"address": *"\([^"]*\)".*/\1/p' || true)
    [ -n "$addr" ] || { show_logs; die "ferry receive did not report a listening address (first line: '$line')"; }
    sync
    stamp; t0=$ts
    timeout "$run_timeout" "$ferry" send --state "$data/state-B" --connections "$connections" "${flags[@]}" \
        --json "$path" "$id_a@$addr" > "$logs/ferry-send.out" 2> "$logs/ferry-send.err" || rc=$?
    [ "$rc" -eq 0 ] || { show_logs; die "ferry send exited with status $rc"; }
    wait_all "$recv_pid"
    stamp; elapsed=$(sub "$ts" "$t0")
    ferry_said=$(tail -n 1 "$logs/ferry-send.out" | sed -n 's/.*"payload_MBps": *\([0-9.eE+-]*\).*/\1/p')
    if [ -n "$ferry_said" ]; then ferry_said=$(awk -v v="$ferry_said" 'BEGIN { printf "%.1f", v }'); fi
}

verify() {  # verify CASE: the last run's destination equals the source
    case $1 in
        file) cmp "$big" "$dst/big.bin" || die "$dst/big.bin differs from the source" ;;
        tree) diff -rq "$src/tree" "$dst/tree" >&2 || die "$dst/tree differs from the source" ;;
    esac
}

# ---- identities ----------------------------------------------------------------------
if [ "$baseline_only" = 0 ]; then
    id_a=$("$ferry" id --state "$data/state-A" | tail -n 1 | tr -d '[:space:]') || die "ferry id failed"
    id_b=$("$ferry" id --state "$data/state-B" | tail -n 1 | tr -d '[:space:]') || die "ferry id failed"
    if [ -z "$id_a" ] || [ -z "$id_b" ]; then die "ferry id printed nothing"; fi
fi

# ---- the cases -----------------------------------------------------------------------
c=$connections
declare -A times said
cases=(file tree)
declare -A case_label case_bytes case_tools
case_label[file]="1 file, $size_mib MiB"
case_label[tree]="$nfiles files x $file_kib KiB"
case_bytes[file]=$big_bytes
case_bytes[tree]=$tree_bytes
case_tools[file]="nc"
case_tools[tree]="tar+nc"
if [ "$baseline_only" = 0 ]; then
    case_tools[file]+=" ferry-tls-c$c"
    case_tools[tree]+=" ferry-tls-c$c"
    if [ "$plaintext" = 1 ]; then
        case_tools[file]+=" ferry-plain-c$c"
        case_tools[tree]+=" ferry-plain-c$c"
    fi
fi

run_tool() {  # run_tool CASE TOOL
    local path=$big
    [ "$1" = tree ] && path=$src/tree
    ferry_said=
    case $2 in
        nc) run_nc_file ;;
        tar+nc) run_tar_nc ;;
        ferry-tls-*) run_ferry 0 "$path" ;;
        ferry-plain-*) run_ferry 1 "$path" ;;
    esac
}

for cs in "${cases[@]}"; do
    read -r -a tools <<< "${case_tools[$cs]}"
    for r in $(seq 1 "$rounds"); do
        for t in "${tools[@]}"; do
            run_tool "$cs" "$t"
            if [ "$r" = 1 ]; then verify "$cs"; fi
            times[$cs/$t]+="$elapsed "
            said[$cs/$t]+="${ferry_said:--} "
            log "$(printf '%-22s round %d/%d  %-16s %8.3f s' "${case_label[$cs]}" "$r" "$rounds" "$t" "$elapsed")"
        done
    done
done

# ---- report --------------------------------------------------------------------------
stats() {  # stats "t1 t2 ...": prints "fastest median"
    tr ' ' '\n' <<< "$1" | awk 'NF' | sort -g |
        awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.6f %.6f\n", v[1], m }'
}

report() {
    local cs t base_f base_m f m cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "## $(date -u +%Y-%m-%dT%H:%M:%SZ) — loopback"
    echo
    echo "- machine: $(uname -srm); ${cpu:-unknown CPU}; $(nproc) CPUs; $(awk '/^MemTotal:/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
    echo "- source: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$( [ -n "$(git -C "$repo" status --porcelain 2>/dev/null)" ] && echo ' (with local changes)')"
    echo "- run: \`bench/run.sh $args_given\` — $rounds round(s), tools alternating, data in /dev/shm, sync and empty destination before each run"
    echo "- commands: \`nc -d -l 127.0.0.1 PORT > DEST/big.bin\` / \`nc -N 127.0.0.1 PORT < big.bin\`;" \
         "\`nc -d -l 127.0.0.1 PORT | tar -C DEST -B -xf -\` / \`tar -C SRC -cf - tree | nc -N 127.0.0.1 PORT\`;" \
         "\`ferry receive --listen 127.0.0.1:0 --accept-from ID --json [--plaintext] DEST\` /" \
         "\`ferry send --connections $c [--plaintext] --json PATH ID@ADDR\`"
    echo "- time: sender start to both sides exited; MB/s = 10^6 payload bytes/s; ratio = baseline fastest time / tool fastest time (>1: faster than the baseline)"
    echo
    echo "| case | tool | fastest s | median s | fastest MB/s | median MB/s | speed vs baseline (fastest) | (median) |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for cs in "${cases[@]}"; do
        read -r -a tools <<< "${case_tools[$cs]}"
        read -r base_f base_m <<< "$(stats "${times[$cs/${tools[0]}]}")"
        for t in "${tools[@]}"; do
            read -r f m <<< "$(stats "${times[$cs/$t]}")"
            awk -v c="${case_label[$cs]}" -v t="$t" -v f="$f" -v m="$m" -v b="${case_bytes[$cs]}" \
                -v bf="$base_f" -v bm="$base_m" 'BEGIN {
                    printf "| %s | %s | %.3f | %.3f | %.0f | %.0f | %.2fx | %.2fx |\n",
                        c, t, f, m, b / f / 1e6, b / m / 1e6, bf / f, bm / m }'
        done
    done
    echo
    echo "Raw times (s), in run order:"
    echo
    for cs in "${cases[@]}"; do
        read -r -a tools <<< "${case_tools[$cs]}"
        for t in "${tools[@]}"; do
            echo "- ${case_label[$cs]}, $t: ${times[$cs/$t]}"
            case $t in ferry-*) echo "  (ferry's own payload MB/s: ${said[$cs/$t]})" ;; esac
        done
    done
    echo
}

out=$(report)
printf '%s\n' "$out"
if [ "$record" = 1 ]; then
    printf '%s\n' "$out" >> "$repo/bench/RESULTS.md"
    log "appended to bench/RESULTS.md"
fi
