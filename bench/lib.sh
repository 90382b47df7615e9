# shellcheck shell=bash
# Shared helpers of the benchmark harnesses (bench/run.sh: loopback; bench/wan.sh: the
# emulated WAN). Sourced, not run. The caller sets, before calling the helpers that use
# them: `logs` (the current run's log folder), `dst` (its destination folder), `data` (the
# work folder), `run_timeout` (seconds one transfer or listener may take), the array
# `bg_pids` (servers to kill on exit) and, optionally, `log_tag` (message prefix, default
# "bench"). Every wait here is bounded.

log() { printf '%s: %s\n' "${log_tag:-bench}" "$*" >&2; }
die() { printf '%s: FAILED: %s\n' "${log_tag:-bench}" "$*" >&2; exit 1; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ]; }

# ---- space and memory ----------------------------------------------------------------
mib() { echo $(( ($1 + 1048575) / 1048576 )); }
shm_avail() { df -Pk /dev/shm | awk 'NR == 2 { printf "%.0f\n", $4 * 1024 }'; }
mem_avail() { awk '$1 == "MemAvailable:" { printf "%.0f\n", $2 * 1024 }' /proc/meminfo; }

# ---- time ----------------------------------------------------------------------------
# stamp: sets $ts to the current time in seconds (EPOCHREALTIME avoids forking date).
stamp() { if [ -n "${EPOCHREALTIME:-}" ]; then ts=$EPOCHREALTIME; else ts=$(date +%s.%N); fi; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a - b }'; }

# stats "v1 v2 ...": prints "smallest median".
stats() {
    tr ' ' '\n' <<< "$1" | awk 'NF' | sort -g |
        awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.6f %.6f\n", v[1], m }'
}

# ---- processes and ports -------------------------------------------------------------
reset_dest() { rm -rf "$dst" "$logs"; mkdir -p "$dst" "$logs"; }   # and the last run's logs

# port_listening PORT [PID]: true if something listens on TCP PORT (IPv4 or IPv6), in
# this shell's network namespace or, with PID, in that process's (/proc/PID/net).
port_listening() {
    local hex net=/proc/net
    [ -z "${2:-}" ] || net=/proc/$2/net
    hex=$(printf ':%04X' "$1")
    awk -v p="$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' \
        "$net/tcp" "$net/tcp6" 2>/dev/null
}

alive() { kill -0 "$1" 2>/dev/null; }

# "${RT[@]}" FILE COMMAND...: runs COMMAND under /usr/bin/time, its user and system CPU
# seconds and peak RSS (KiB) going to FILE, named $logs/s-*.rusage (sending side) or
# $logs/r-*.rusage (receiving side). Used as `"${RT[@]}" FILE timeout ... PROGRAM`: time
# counts the waited-for PROGRAM and what it forked and waited for (a daemon's
# per-connection children). An array, not a function, so that `$!` of a background one
# is time's own pid.
RT=(/usr/bin/time -f '%U %S %M' -o)

# usage_of_run: from the last run's .rusage files, sets run_cpu (CPU seconds of every
# process), run_cpu_s and run_cpu_r (the same per side), run_rss_s and run_rss_r (peak RSS
# in MiB of the largest process per side).
usage_of_run() {
    local f line
    run_cpu=0 run_cpu_s=0 run_cpu_r=0 run_rss_s=0 run_rss_r=0
    for f in "$logs"/*.rusage; do
        [ -e "$f" ] || continue
        line=$(awk 'NF == 3 && $1 ~ /^[0-9.]+$/ { l = $0 } END { print l }' "$f")
        [ -n "$line" ] || continue
        read -r run_cpu run_cpu_s run_cpu_r run_rss_s run_rss_r <<< "$(awk -v l="$line" -v side="${f##*/}" \
            -v c="$run_cpu" -v cs="$run_cpu_s" -v cr="$run_cpu_r" -v s="$run_rss_s" -v r="$run_rss_r" 'BEGIN {
                split(l, a, " "); c += a[1] + a[2]; m = a[3] / 1024;
                if (substr(side, 1, 2) == "s-") { cs += a[1] + a[2]; if (m > s) s = m } else { cr += a[1] + a[2]; if (m > r) r = m }
                printf "%.3f %.3f %.3f %.1f %.1f\n", c, cs, cr, s, r }')"
    done
}

# wait_listening PORT PID NAME [ADDR]: until PORT listens (5 s at most) in PID's network
# namespace while PID lives. ADDR (default 127.0.0.1) is only for the message.
wait_listening() {
    for _ in $(seq 1 500); do
        port_listening "$1" "$2" && return 0
        alive "$2" || break
        sleep 0.01
    done
    show_logs
    die "$3 did not start listening on ${4:-127.0.0.1}:$1"
}

# stop_server PID: ends a server started for one run as `rt NAME timeout ... server`
# (SIGTERM to the timeout process, which passes it on; bounded wait).
stop_server() {
    pkill -TERM -P "$1" 2>/dev/null || kill "$1" 2>/dev/null || true
    for _ in $(seq 1 500); do alive "$1" || break; sleep 0.01; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    bg_pids=()
}

show_logs() {
    local f
    for f in "$logs"/*; do
        [ -s "$f" ] || continue
        printf -- '---- %s ----\n' "${f##*/}" >&2
        tail -n 40 "$f" >&2
    done
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

# ---- peers: ferry, rsync daemon, sshd ------------------------------------------------
# ferry_ids: sets id_a and id_b, the node IDs of the state folders $data/state-A (the
# receiver) and $data/state-B (the sender), creating them.
ferry_ids() {
    id_a=$("$ferry" id --state "$data/state-A" | tail -n 1 | tr -d '[:space:]') || die "ferry id failed"
    id_b=$("$ferry" id --state "$data/state-B" | tail -n 1 | tr -d '[:space:]') || die "ferry id failed"
    if [ -z "$id_a" ] || [ -z "$id_b" ]; then die "ferry id printed nothing"; fi
}

# ferry_listen_address OUT PID POLLS: waits (POLLS x 10 ms at most, while PID lives) for
# the first line of `ferry receive --json` in file OUT and prints the address it listens
# on; fails with the logs if that line is not a `listening` event.
ferry_listen_address() {
    local out=$1 pid=$2 polls=$3 line='' addr
    for _ in $(seq 1 "$polls"); do
        if [ "$(wc -l < "$out")" -ge 1 ]; then
            line=$(head -n 1 "$out")
            break
        fi
        alive "$pid" || break
        sleep 0.01
    done
    addr=$(printf '%s\n' "$line" | grep '"event": *"listening"' | sed -n 's/.*"address": *"\([^"]*\)".*/\1/p' || true)
    [ -n "$addr" ] || { show_logs; die "ferry receive did not report a listening address (first line: '$line')"; }
    printf '%s\n' "$addr"
}

# write_rsyncd_conf: $data/rsyncd.conf with one writable module, [dst] = $dst.
write_rsyncd_conf() {
    cat > "$data/rsyncd.conf" <<CONF
use chroot = no
[dst]
    path = $dst
    read only = no
    uid = $(id -u)
    gid = $(id -g)
CONF
}

# One sshd for the rsync-over-ssh and scp runs, with its own keys (started per run under
# rt, like the rsync daemon).
ssh_setup() {
    [ -e "$data/ssh/client_key" ] && return 0
    mkdir -p "$data/ssh" /run/sshd
    ssh-keygen -q -t ed25519 -N '' -f "$data/ssh/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$data/ssh/client_key"
    cp "$data/ssh/client_key.pub" "$data/ssh/authorized_keys"
}

# write_sshd_config PORT ADDR: $data/ssh/sshd_config for an sshd on ADDR:PORT; sets
# ssh_opts, the matching client options (`-p PORT -i KEY -o ...`).
write_sshd_config() {
    cat > "$data/ssh/sshd_config" <<CONF
Port $1
ListenAddress $2
HostKey $data/ssh/host_key
AuthorizedKeysFile $data/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
Subsystem sftp internal-sftp
UseDNS no
CONF
    ssh_opts="-p $1 -i $data/ssh/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
}

# select_peers: from $peers_arg (empty: every peer; "none"; or a comma-separated list of
# names in all_peers), sets peer_on[NAME]=1 for each asked peer whose programs
# (peer_needs[NAME]) are installed; the others go to skipped_peers and the log.
# has_peer NAME tests it.
select_peers() {
    declare -gA peer_on=()
    local p prog asked=()
    skipped_peers=()
    if [ -n "$peers_arg" ] && [ "$peers_arg" != none ]; then
        IFS=, read -r -a asked <<< "$peers_arg"
        for p in "${asked[@]}"; do
            [ -n "${peer_needs[$p]:-}" ] || die "unknown peer '$p' (known: ${all_peers[*]})"
            peer_on[$p]=1
        done
    elif [ -z "$peers_arg" ]; then
        for p in "${all_peers[@]}"; do peer_on[$p]=1; done
    fi
    for p in "${all_peers[@]}"; do
        [ -n "${peer_on[$p]:-}" ] || continue
        for prog in ${peer_needs[$p]}; do
            if ! command -v "$prog" >/dev/null; then
                unset "peer_on[$p]"
                skipped_peers+=("$p (no $prog; make deps-bench)")
                break
            fi
        done
    done
    for p in "${skipped_peers[@]}"; do log "skipping $p"; done
}
has_peer() { [ -n "${peer_on[$1]:-}" ]; }

# stop_pids PID...: end background processes of this script: kill every one, then wait for
# every one (ones already gone are fine).
stop_pids() {
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# drop_data: remove the run's data folder, unless --keep asked to keep it.
drop_data() {
    if [ "$keep" = 1 ]; then
        log "kept $data"
    else
        rm -rf "$data"
    fi
}

# source_revision: the commit measured, marked when the tree has local changes.
source_revision() {
    local rev
    rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(git -C "$repo" status --porcelain 2>/dev/null)" ]; then
        rev="$rev (with local changes)"
    fi
    printf '%s\n' "$rev"
}
