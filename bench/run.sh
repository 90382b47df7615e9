#!/usr/bin/env bash
# Loopback benchmark: ferry against the tools it replaces, in the same run. Four cases: one
# big random file, one big highly compressible file, many 4 KiB files, 1 MiB files. Files:
# nc (the baseline), a local dd copy (the physical limit: read + page-cache write), socat
# with 1 MiB blocks over plain TCP and over OpenSSL, rsync (daemon), rsync over ssh, scp,
# and iperf3 -P1/-P4 (the raw TCP ceiling, no disk; random file only). Folders: tar | nc
# (the baseline), rsync (daemon), rsync over ssh, scp -r. ferry with TLS without --connections (its default) and on 1, 4 and 8
# connections and with --plaintext on 4. Peers that are not installed are skipped.
#
#   bench/run.sh [--rounds N] [--size-mib N] [--files N] [--mid-files N] [--cases LIST]
#                [--connections LIST] [--peers LIST]
#                [--quick] [--ferry PATH] [--baseline-only] [--no-plaintext] [--no-warm]
#                [--record] [--keep]
#
# Data lives in a fresh folder under /dev/shm (page-cache backed, so the disk is not what
# is measured). Each case runs N rounds with the tools alternating (A B C A B C ...); before
# every timed run the destination is emptied and `sync` runs. A run is timed from the start
# of the sender until both sender and receiver have exited, so connection set-up (and the
# TLS handshake) is included for every tool. Each tool's result is verified once per case,
# outside the timing. Only 127.0.0.1 is used; every wait is bounded. Every process of a
# run is started under /usr/bin/time: the report gives CPU seconds (user + system, both
# sides) per GiB and the peak RSS of each side.
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
  --mid-files N     number of 1 MiB files in the mid case (default 1000)
  --cases L         comma-separated cases: file (random), zero (compressible), tree (4 KiB
                    files), mid (1 MiB files); default all four
  --connections L   ferry --connections values with TLS, comma-separated; "default" runs
                    it without the flag (default default,1,4,8; --plaintext runs use 4, or
                    the only value given)
  --peers L         comma-separated peers to run besides nc and tar|nc (default: all of
                    dd,socat,socat-tls,iperf3,rsync,rsync-ssh,scp that are installed)
  --quick           smoke run: 16 MiB file, 200 files, 1 round, no warm-up, ferry on 4
                    connections only
  --ferry PATH      ferry binary (default $FERRY_BIN or build/release/tools/ferry)
  --baseline-only   run only nc and tar|nc (no ferry binary needed)
  --no-plaintext    skip the ferry --plaintext runs
  --no-warm         skip the once-per-boot /dev/shm warm-up
  --record          append the report to bench/RESULTS.md
  --keep            keep the data folder under /dev/shm

The same tools over an emulated WAN (delay, loss, rate limit): bench/wan.sh, or
make bench-wan (see bench/wan.sh --help).
EOF
}

# Helpers shared with bench/wan.sh: log, die, is_uint, mib, shm_avail, mem_avail, stamp,
# sub, stats, reset_dest, port_listening, alive, RT, usage_of_run, wait_listening,
# stop_server, show_logs, wait_all, ferry_ids, ferry_listen_address, write_rsyncd_conf,
# ssh_setup, write_sshd_config, select_peers, has_peer, stop_pids, drop_data,
# source_revision.
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"

rounds='' size_mib='' nfiles='' mid_files='' cases_arg='' connections='' peers_arg='' quick=0 baseline_only=0 plaintext=1 warm=1 record=0 keep=0
ferry=${FERRY_BIN:-$repo/build/release/tools/ferry}
args_given=$*
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=${2:-}; shift 2 ;;
        --size-mib) size_mib=${2:-}; shift 2 ;;
        --files) nfiles=${2:-}; shift 2 ;;
        --connections) connections=${2:-}; shift 2 ;;
        --peers) peers_arg=${2:-}; shift 2 ;;
        --mid-files) mid_files=${2:-}; shift 2 ;;
        --cases) cases_arg=${2:-}; shift 2 ;;
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
    : "${rounds:=1}" "${size_mib:=16}" "${nfiles:=200}" "${mid_files:=16}" "${connections:=4}"
    warm=0
fi
: "${rounds:=5}" "${size_mib:=1024}" "${nfiles:=10000}" "${mid_files:=1000}" "${connections:=default,1,4,8}"
: "${cases_arg:=file,zero,tree,mid}"
for v in rounds size_mib nfiles mid_files; do
    is_uint "${!v}" || die "--${v//_/-} needs a positive integer, got '${!v}'"
done
IFS=, read -r -a conn_list <<< "$connections"
for c in "${conn_list[@]}"; do
    [ "$c" = default ] || is_uint "$c" || die "--connections needs positive integers or 'default', got '$connections'"
done
plain_conns=4
[ "${#conn_list[@]}" -eq 1 ] && plain_conns=${conn_list[0]}

file_kib=4
big_bytes=$((size_mib * 1024 * 1024))
tree_bytes=$((nfiles * file_kib * 1024))
mid_bytes=$((mid_files * 1048576))
IFS=, read -r -a cases <<< "$cases_arg"
for cs in "${cases[@]}"; do
    case $cs in file|zero|tree|mid) ;; *) die "unknown case '$cs' (known: file, zero, tree, mid)" ;; esac
done
run_timeout=600          # seconds any single transfer (or listener) may take
listen_wait_polls=3000   # x 10 ms = 30 s for a receiver to report it is listening

# ---- requirements --------------------------------------------------------------------
for tool in nc tar timeout awk split sync /usr/bin/time; do
    command -v "$tool" >/dev/null || die "$tool is not installed (make deps)"
done
nc -h 2>&1 | grep -q OpenBSD || die "nc must be netcat-openbsd (needs -N, -d)"
if [ "$baseline_only" = 0 ]; then
    case $ferry in /*) ;; *) ferry=$PWD/$ferry ;; esac
    [ -x "$ferry" ] || die "ferry binary not found at $ferry (make build, or --baseline-only)"
fi
if [ ! -d /dev/shm ] || [ ! -w /dev/shm ]; then die "/dev/shm is not a writable folder"; fi

# The peers to run: asked for, or every one whose programs are installed.
declare -A peer_needs=([dd]="dd" [socat]="socat" [socat-tls]="socat openssl" [iperf3]="iperf3"
                       [rsync]="rsync" [rsync-ssh]="rsync ssh ssh-keygen /usr/sbin/sshd" [scp]="scp ssh-keygen /usr/sbin/sshd")
all_peers=(dd socat socat-tls iperf3 rsync rsync-ssh scp)
if [ "$quick" = 1 ] && [ -z "$peers_arg" ]; then peers_arg=none; fi
select_peers

# ---- space and memory ----------------------------------------------------------------
# sources (both big files, both trees) + the largest destination copy
need=$(( 3 * big_bytes + 2 * tree_bytes + 2 * mid_bytes + 64 * 1048576 ))
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
    local rc=$?
    stop_pids "${bg_pids[@]}"
    drop_data
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$src" "$dst" "$logs"

# ---- data ----------------------------------------------------------------------------
log "creating $size_mib MiB random and compressible files, $nfiles x $file_kib KiB and $mid_files x 1 MiB random files in $data"
big=$src/big.bin
head -c "$big_bytes" /dev/urandom > "$big"
# Highly compressible: a short text line repeated (zstd and gzip shrink it > 100x).
{ yes 'ferry bench: a highly compressible line of text, repeated 0123456789' || true; } | head -c "$big_bytes" > "$src/zero.bin"
left=$mid_files d=0
while [ "$left" -gt 0 ]; do
    n=$(( left < 100 ? left : 100 ))
    dir=$(printf '%s/mid/d%04d' "$src" "$d")
    mkdir -p "$dir"
    head -c $(( n * 1048576 )) /dev/urandom | split -b 1048576 -a 3 -d - "$dir/f"
    left=$(( left - n )) d=$(( d + 1 ))
done
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
# pick_port: a free port in 20000-40000 on 127.0.0.1 (nothing listens there now).
pick_port() {
    local port
    for _ in $(seq 1 50); do
        port=$(( 20000 + RANDOM % 20001 ))
        port_listening "$port" || { echo "$port"; return 0; }
    done
    die "no free port found"
}

# start_nc MODE: start an nc listener on a random free port in 20000-40000 on 127.0.0.1.
# MODE file: write the stream to $dst/$nc_name. MODE tar: unpack the stream into $dst.
# Sets nc_port and listener_pids.
start_nc() {
    local mode=$1 attempt port pid
    for attempt in $(seq 1 20); do
        port=$(( 20000 + RANDOM % 20001 ))
        port_listening "$port" && continue
        listener_pids=()
        if [ "$mode" = file ]; then
            "${RT[@]}" "$logs/r-nc.rusage" timeout -k 5 "$run_timeout" nc -d -l 127.0.0.1 "$port" > "$dst/$nc_name" 2> "$logs/nc-listen.err" &
            listener_pids+=("$!")
        else
            rm -f "$data/fifo"
            mkfifo "$data/fifo"
            "${RT[@]}" "$logs/r-nc.rusage" timeout -k 5 "$run_timeout" nc -d -l 127.0.0.1 "$port" > "$data/fifo" 2> "$logs/nc-listen.err" &
            listener_pids+=("$!")
            # -B: reblock short reads from the pipe (GNU tar only does this by itself for stdin)
            "${RT[@]}" "$logs/r-tar.rusage" timeout -k 5 "$run_timeout" tar -C "$dst" -B -xf - < "$data/fifo" 2> "$logs/tar-x.err" &
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

# Each run_* function does one timed transfer and sets $elapsed (seconds).
run_nc_file() {  # run_nc_file PATH
    reset_dest
    nc_name=${1##*/}
    start_nc file
    sync
    stamp; local t0=$ts rc=0
    "${RT[@]}" "$logs/s-nc.rusage" timeout "$run_timeout" nc -N 127.0.0.1 "$nc_port" < "$1" 2> "$logs/nc-send.err" || rc=$?
    [ "$rc" -eq 0 ] || { show_logs; die "nc sender exited with status $rc"; }
    wait_all "${listener_pids[@]}"
    stamp; elapsed=$(sub "$ts" "$t0")
}

run_tar_nc() {  # run_tar_nc FOLDER (under $src)
    reset_dest
    start_nc tar
    sync
    stamp; local t0=$ts rc=0
    { "${RT[@]}" "$logs/s-tar.rusage" tar -C "$src" -cf - "${1##*/}" | "${RT[@]}" "$logs/s-nc.rusage" timeout "$run_timeout" nc -N 127.0.0.1 "$nc_port"; } 2> "$logs/tar-nc-send.err" || rc=$?
    [ "$rc" -eq 0 ] || { show_logs; die "tar | nc sender exited with status $rc"; }
    wait_all "${listener_pids[@]}"
    stamp; elapsed=$(sub "$ts" "$t0")
}

# run_ferry PLAIN CONNECTIONS PATH [SEND FLAG...]: PLAIN is 1 for --plaintext on both sides.
ferry_said=
run_ferry() {
    local plain=$1 conns=$2 path=$3 flags=() recv_pid addr t0 rc=0 conn_flags=()
    shift 3
    [ "$conns" = default ] || conn_flags=(--connections "$conns")
    local send_flags=("$@")
    if [ "$plain" = 1 ]; then flags=(--plaintext); fi
    reset_dest
    : > "$logs/ferry-receive.out"
    "${RT[@]}" "$logs/r-ferry.rusage" timeout -k 5 "$run_timeout" "$ferry" receive --state "$data/state-A" --listen 127.0.0.1:0 \
        --accept-from "$id_b" --json "${flags[@]}" "$dst" \
        > "$logs/ferry-receive.out" 2> "$logs/ferry-receive.err" &
    recv_pid=$!
    bg_pids=("$recv_pid")
    addr=$(ferry_listen_address "$logs/ferry-receive.out" "$recv_pid" "$listen_wait_polls")
    sync
    stamp; t0=$ts
    "${RT[@]}" "$logs/s-ferry.rusage" timeout "$run_timeout" "$ferry" send --state "$data/state-B" "${conn_flags[@]}" "${flags[@]}" "${send_flags[@]}" \
        --json "$path" "$id_a@$addr" > "$logs/ferry-send.out" 2> "$logs/ferry-send.err" || rc=$?
    [ "$rc" -eq 0 ] || { show_logs; die "ferry send exited with status $rc"; }
    wait_all "$recv_pid"
    stamp; elapsed=$(sub "$ts" "$t0")
    ferry_said=$(tail -n 1 "$logs/ferry-send.out" | sed -n 's/.*"payload_MBps": *\([0-9.eE+-]*\).*/\1/p')
    if [ -n "$ferry_said" ]; then ferry_said=$(awk -v v="$ferry_said" 'BEGIN { printf "%.1f", v }'); fi
}

# run_dd PATH: a local copy of PATH into the destination (read + page-cache write): the
# physical limit of any loopback transfer to this folder.
run_dd() {
    reset_dest
    sync
    stamp; local t0=$ts
    "${RT[@]}" "$logs/s-dd.rusage" dd if="$1" of="$dst/${1##*/}" bs=1M status=none || { show_logs; die "dd failed"; }
    stamp; elapsed=$(sub "$ts" "$t0")
}

# run_socat TLS PATH: socat with 1 MiB blocks, TLS 1 (OpenSSL, certificate not verified:
# the cheapest TLS socat can do) or plain TCP.
run_socat() {
    local tls=$1 path=$2 port pid t0 rc=0 listen connect
    reset_dest
    port=$(pick_port)
    if [ "$tls" = 1 ]; then
        listen="OPENSSL-LISTEN:$port,bind=127.0.0.1,reuseaddr,cert=$data/socat.pem,verify=0"
        connect="OPENSSL:127.0.0.1:$port,verify=0"
    else
        listen="TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr"
        connect="TCP:127.0.0.1:$port"
    fi
    "${RT[@]}" "$logs/r-socat.rusage" timeout -k 5 "$run_timeout" socat -u -b 1048576 "$listen" "CREATE:$dst/${path##*/}" \
        2> "$logs/socat-listen.err" &
    pid=$!
    bg_pids=("$pid")
    wait_listening "$port" "$pid" socat
    sync
    stamp; t0=$ts
    "${RT[@]}" "$logs/s-socat.rusage" timeout "$run_timeout" socat -u -b 1048576 "OPEN:$path,rdonly" "$connect" 2> "$logs/socat-send.err" || rc=$?
    [ "$rc" -eq 0 ] || { show_logs; die "socat sender exited with status $rc"; }
    wait_all "$pid"
    stamp; elapsed=$(sub "$ts" "$t0")
}

# run_iperf3 STREAMS BYTES: the raw TCP ceiling (memory to memory, no disk), client time.
run_iperf3() {
    local streams=$1 bytes=$2 port pid t0 rc=0
    reset_dest
    port=$(pick_port)
    "${RT[@]}" "$logs/r-iperf3.rusage" timeout -k 5 "$run_timeout" iperf3 -s -1 -B 127.0.0.1 -p "$port" > "$logs/iperf3-server.out" 2>&1 &
    pid=$!
    bg_pids=("$pid")
    wait_listening "$port" "$pid" iperf3
    stamp; t0=$ts
    "${RT[@]}" "$logs/s-iperf3.rusage" timeout "$run_timeout" iperf3 -c 127.0.0.1 -p "$port" -P "$streams" -n "$bytes" \
        > "$logs/iperf3-client.out" 2>&1 || rc=$?
    [ "$rc" -eq 0 ] || { show_logs; die "iperf3 client exited with status $rc"; }
    wait_all "$pid"
    stamp; elapsed=$(sub "$ts" "$t0")
}

# run_rsyncd PATH: rsync -a to an rsync daemon on 127.0.0.1 (started for the run, so its
# CPU and memory are measured; not timed).
run_rsyncd() {
    local path=$1 port pid t0 rc=0
    reset_dest
    port=$(pick_port)
    write_rsyncd_conf
    "${RT[@]}" "$logs/r-rsyncd.rusage" timeout -k 5 "$run_timeout" rsync --daemon --no-detach --config="$data/rsyncd.conf" \
        --address=127.0.0.1 --port="$port" --log-file="$logs/rsyncd.log" 2> "$logs/rsyncd.err" &
    pid=$!
    bg_pids=("$pid")
    wait_listening "$port" "$pid" "rsync --daemon"
    sync
    stamp; t0=$ts
    "${RT[@]}" "$logs/s-rsync.rusage" timeout "$run_timeout" rsync -a "$path" "rsync://127.0.0.1:$port/dst/" 2> "$logs/rsync.err" || rc=$?
    stamp; elapsed=$(sub "$ts" "$t0")
    stop_server "$pid"
    [ "$rc" -eq 0 ] || { show_logs; die "rsync exited with status $rc"; }
}

# run_ssh KIND PATH: KIND rsync-ssh (rsync -a -e ssh) or scp (scp -r).
run_ssh() {
    local kind=$1 path=$2 port pid t0 rc=0 ssh_opts
    ssh_setup
    reset_dest
    port=$(pick_port)
    write_sshd_config "$port" 127.0.0.1
    "${RT[@]}" "$logs/r-sshd.rusage" timeout -k 5 "$run_timeout" /usr/sbin/sshd -D -e -f "$data/ssh/sshd_config" 2> "$logs/sshd.err" &
    pid=$!
    bg_pids=("$pid")
    wait_listening "$port" "$pid" sshd
    sync
    stamp; t0=$ts
    if [ "$kind" = scp ]; then
        # shellcheck disable=SC2086
        "${RT[@]}" "$logs/s-scp.rusage" timeout "$run_timeout" scp -q -r -P "$port" ${ssh_opts#-p $port } "$path" "root@127.0.0.1:$dst/" \
            2> "$logs/scp.err" || rc=$?
    else
        "${RT[@]}" "$logs/s-rsync.rusage" timeout "$run_timeout" rsync -a -e "ssh $ssh_opts" "$path" "root@127.0.0.1:$dst/" \
            2> "$logs/rsync-ssh.err" || rc=$?
    fi
    stamp; elapsed=$(sub "$ts" "$t0")
    stop_server "$pid"
    [ "$rc" -eq 0 ] || { show_logs; die "$kind exited with status $rc"; }
}

verify() {  # verify CASE: the last run's destination equals the source
    local name=${case_path[$1]##*/}
    case ${case_kind[$1]} in
        file) cmp "$src/$name" "$dst/$name" || die "$dst/$name differs from the source" ;;
        tree) diff -rq "$src/$name" "$dst/$name" >&2 || die "$dst/$name differs from the source" ;;
    esac
}

# ---- identities ----------------------------------------------------------------------
if [ "$baseline_only" = 0 ]; then
    ferry_ids
fi

# ---- the cases -----------------------------------------------------------------------
declare -A times said cpus rss_s rss_r
declare -A case_label case_bytes case_tools case_kind case_path
case_label[file]="1 file, $size_mib MiB random"
case_label[zero]="1 file, $size_mib MiB compressible"
case_label[tree]="$nfiles files x $file_kib KiB"
case_label[mid]="$mid_files files x 1 MiB"
case_bytes[file]=$big_bytes case_bytes[zero]=$big_bytes case_bytes[tree]=$tree_bytes case_bytes[mid]=$mid_bytes
case_kind[file]=file case_kind[zero]=file case_kind[tree]=tree case_kind[mid]=tree
case_path[file]=$big case_path[zero]=$src/zero.bin case_path[tree]=$src/tree case_path[mid]=$src/mid
file_tools="nc"
tree_tools="tar+nc"
has_peer dd && file_tools+=" dd"
has_peer socat && file_tools+=" socat"
has_peer socat-tls && file_tools+=" socat-tls"
has_peer rsync && { file_tools+=" rsync"; tree_tools+=" rsync"; }
has_peer rsync-ssh && { file_tools+=" rsync-ssh"; tree_tools+=" rsync-ssh"; }
has_peer scp && { file_tools+=" scp"; tree_tools+=" scp"; }
ferry_tools=""
if [ "$baseline_only" = 0 ]; then
    for c in "${conn_list[@]}"; do ferry_tools+=" ferry-tls-c$c"; done
    if [ "$plaintext" = 1 ]; then ferry_tools+=" ferry-plain-c$plain_conns"; fi
fi
for cs in "${cases[@]}"; do
    if [ "${case_kind[$cs]}" = file ]; then case_tools[$cs]=$file_tools; else case_tools[$cs]=$tree_tools; fi
    # iperf3 moves memory, not files: once, beside the random file.
    if [ "$cs" = file ] && has_peer iperf3; then case_tools[$cs]+=" iperf3-P1 iperf3-P4"; fi
    case_tools[$cs]+=$ferry_tools
    # Compression (auto by default) must not make loopback slower: the same with it off.
    if [ "$cs" = zero ] && [ "$baseline_only" = 0 ]; then case_tools[$cs]+=" ferry-raw-c4"; fi
done
if has_peer socat-tls; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench \
        -keyout "$data/socat.key" -out "$data/socat.crt" 2>/dev/null || die "openssl could not make a certificate"
    cat "$data/socat.key" "$data/socat.crt" > "$data/socat.pem"
fi

run_tool() {  # run_tool CASE TOOL
    local path=${case_path[$1]}
    ferry_said=
    case $2 in
        nc) run_nc_file "$path" ;;
        tar+nc) run_tar_nc "$path" ;;
        dd) run_dd "$path" ;;
        socat) run_socat 0 "$path" ;;
        socat-tls) run_socat 1 "$path" ;;
        iperf3-P*) run_iperf3 "${2#iperf3-P}" "${case_bytes[$1]}" ;;
        rsync) run_rsyncd "$path" ;;
        rsync-ssh) run_ssh rsync-ssh "$path" ;;
        scp) run_ssh scp "$path" ;;
        ferry-tls-c*) run_ferry 0 "${2#ferry-tls-c}" "$path" ;;
        ferry-plain-c*) run_ferry 1 "${2#ferry-plain-c}" "$path" ;;
        ferry-raw-c*) run_ferry 0 "${2#ferry-raw-c}" "$path" --compress never ;;
    esac
    usage_of_run
}

for cs in "${cases[@]}"; do
    read -r -a tools <<< "${case_tools[$cs]}"
    for r in $(seq 1 "$rounds"); do
        for t in "${tools[@]}"; do
            run_tool "$cs" "$t"
            if [ "$r" = 1 ] && [ "${t#iperf3}" = "$t" ]; then verify "$cs"; fi
            times[$cs/$t]+="$elapsed "
            cpus[$cs/$t]+="$run_cpu "
            rss_s[$cs/$t]=$(awk -v a="${rss_s[$cs/$t]:-0}" -v b="$run_rss_s" 'BEGIN { print (b > a) ? b : a }')
            rss_r[$cs/$t]=$(awk -v a="${rss_r[$cs/$t]:-0}" -v b="$run_rss_r" 'BEGIN { print (b > a) ? b : a }')
            said[$cs/$t]+="${ferry_said:--} "
            log "$(printf '%-22s round %d/%d  %-16s %8.3f s' "${case_label[$cs]}" "$r" "$rounds" "$t" "$elapsed")"
        done
    done
done

# ---- report --------------------------------------------------------------------------
report() {
    local cs t base_f base_m f m cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "## $(date -u +%Y-%m-%dT%H:%M:%SZ) — loopback"
    echo
    echo "- machine: $(uname -srm); ${cpu:-unknown CPU}; $(nproc) CPUs; $(awk '/^MemTotal:/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
    echo "- source: $(source_revision)"
    echo "- run: \`bench/run.sh $args_given\` — $rounds round(s), tools alternating, data in /dev/shm, sync and empty destination before each run"
    echo "- commands: \`nc -d -l 127.0.0.1 PORT > DEST/FILE\` / \`nc -N 127.0.0.1 PORT < FILE\`;" \
         "\`nc -d -l 127.0.0.1 PORT | tar -C DEST -B -xf -\` / \`tar -C SRC -cf - tree | nc -N 127.0.0.1 PORT\`;" \
         "\`ferry receive --listen 127.0.0.1:0 --accept-from ID --json [--plaintext] DEST\` /" \
         "\`ferry send [--connections N] [--plaintext] --json PATH ID@ADDR\` (ferry-tls-cdefault: without --connections; ferry-raw: with --compress never);" \
         "\`dd if=PATH of=DEST bs=1M\`; \`socat -u -b 1048576\` TCP-LISTEN/TCP and OPENSSL-LISTEN/OPENSSL (verify=0);" \
         "\`iperf3 -c 127.0.0.1 -P N -n BYTES\` (no disk); \`rsync -a PATH rsync://127.0.0.1:PORT/dst/\` (daemon started per run);" \
         "\`rsync -a -e ssh\` and \`scp -r\` to an sshd on 127.0.0.1 (started per run)"
    echo "- resources: every process under /usr/bin/time; CPU = user + system seconds of all processes of a run (daemons included), per GiB of payload, median over rounds; RSS = the largest process of each side, max over rounds"
    echo "- time: sender start to both sides exited; MB/s = 10^6 payload bytes/s; ratio = baseline fastest time / tool fastest time (>1: faster than the baseline)"
    echo
    echo "| case | tool | fastest s | median s | fastest MB/s | median MB/s | speed vs baseline (fastest) | (median) | CPU s/GiB | peak RSS MiB send / recv |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for cs in "${cases[@]}"; do
        read -r -a tools <<< "${case_tools[$cs]}"
        read -r base_f base_m <<< "$(stats "${times[$cs/${tools[0]}]}")"
        for t in "${tools[@]}"; do
            read -r f m <<< "$(stats "${times[$cs/$t]}")"
            read -r _ cpu_m <<< "$(stats "${cpus[$cs/$t]}")"
            awk -v c="${case_label[$cs]}" -v t="$t" -v f="$f" -v m="$m" -v b="${case_bytes[$cs]}" \
                -v bf="$base_f" -v bm="$base_m" -v cpu="$cpu_m" -v rs="${rss_s[$cs/$t]}" -v rr="${rss_r[$cs/$t]}" 'BEGIN {
                    printf "| %s | %s | %.3f | %.3f | %.0f | %.0f | %.2fx | %.2fx | %.2f | %.0f / %.0f |\n",
                        c, t, f, m, b / f / 1e6, b / m / 1e6, bf / f, bm / m, cpu / (b / 1073741824), rs, rr }'
        done
    done
    echo
    if [ "${#skipped_peers[@]}" -gt 0 ]; then
        echo "Skipped: ${skipped_peers[*]}."
        echo
    fi
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
