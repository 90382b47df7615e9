#!/usr/bin/env bash
# WAN benchmark (issue 5): ferry against iperf3, rsync and scp over an emulated WAN link.
# The link is ../shared/linkem (relative to the project root): two network namespaces,
# lemA (198.18.0.1, the senders) and lemB (198.18.0.2, the receivers and servers), joined
# by a user-space emulator with one-way delay, random loss and a rate limit (see its
# README). Without linkem, or when not root, the script says so and exits 0.
#
#   bench/wan.sh [--scenarios LIST] [--cc LIST] [--rounds N] [--size-mib N]
#                [--target-s S] [--max-size-mib N] [--zero-size-mib N] [--iperf-s S]
#                [--connections LIST] [--peers LIST] [--tcp-mem-max BYTES] [--ferry-cc MODE] [--no-ss]
#                [--quick] [--ferry PATH] [--record] [--keep]
#
# Scenarios (each under every congestion control of --cc, default cubic and bbr; the link
# is brought up fresh for each scenario and cc, so its counters are per pair):
#   lossy    delay 20 ms each way (RTT 40 ms), loss 0.001 per packet and direction, 1000 Mbit/s
#   longfat  delay 50 ms each way (RTT 100 ms), no loss, 1000 Mbit/s
#   slow     delay 10 ms each way (RTT 20 ms), no loss, 100 Mbit/s; also a compressible
#            file sent by ferry with its default settings, reported against the link rate
# Tools: iperf3 -P1 and -P4 (fixed duration, receiver goodput, no disk), ferry with TLS on
# without --connections (its default) and with 1, 4 and 8 (default settings otherwise), rsync to a daemon, rsync over ssh
# and scp (both to an sshd started per run). Every file tool sends the same random file.
#
# File size: unless --size-mib fixes it, each scenario and cc gets a file that takes
# about --target-s (10) seconds at the rate iperf3 -P4 reached there in round 1 (the rate
# ferry is asked to reach), between 32 MiB and --max-size-mib (1024). Tools slower than
# iperf3 -P4 (single-stream ones under cubic with loss) take correspondingly longer.
#
# Congestion control: each scenario runs under every cc of --cc, set as the default of both
# namespaces. A ferry that picks its own (`--congestion`, default bbr) is told to follow it
# (`--congestion system`), so that every tool of a row uses the same cc; --ferry-cc default
# measures ferry's own choice instead. The ss summary shows the cc each tool's sockets used.
#
# TCP buffers: a fresh namespace caps the send buffer (tcp_wmem max) at 4 MiB, which
# limits one flow at 40 ms RTT to about 600 Mbit/s. Like a tuned server, both namespaces
# get tcp_wmem and tcp_rmem max = --tcp-mem-max (default 33554432 = 32 MiB; 0 leaves the
# namespace defaults). The report states the values in force.
#
# Measuring: data in a fresh folder under /dev/shm; N rounds (default 3) with the tools
# alternating; before every timed run the destination is emptied and `sync` runs; a file
# run is timed from the sender's start until sender and receiver have exited (connection
# set-up and handshakes included), and its output is compared with the source once per
# scenario and cc. Every process runs under /usr/bin/time: CPU seconds (user + system) of
# each side and the peak RSS of each side's largest process. Rates are Mbit/s of payload
# (10^6 bits/s). In round 1, `ss -tinm` samples the sender's sockets once a second (off
# with --no-ss); the report summarises cwnd, RTT, retransmissions and how long the flows
# were limited by the receive window or the send buffer. `netpair status` is read at the
# end of each scenario and cc: the loss linkem counted, queue drops, and ovf_pkts /
# TUN tx_dropped, which must stay 0 (else the emulator, not the link, was the limit).
#
# Everything (servers, the link, the namespaces) is torn down on exit, Ctrl-C included.
# --record appends the report to bench/RESULTS.md.
set -euo pipefail
export LC_ALL=C

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log_tag=bench-wan
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    cat <<'EOF'

Options:
  --scenarios L     comma-separated: lossy, longfat, slow (default all three)
  --cc L            congestion controls, comma-separated (default cubic,bbr)
  --rounds N        timed runs per tool, scenario and cc (default 3)
  --size-mib N      size of the random file in MiB (default: auto, see above)
  --target-s S      auto size: seconds one file run should take at the iperf3 -P4 rate (default 10)
  --max-size-mib N  auto size: at most this many MiB (default 1024)
  --zero-size-mib N size of the compressible file of the slow scenario (default 1024)
  --iperf-s S       iperf3 -t (default 10)
  --connections L   ferry --connections values; "default" runs it without the flag (default default,1,4,8)
  --peers L         comma-separated peers besides ferry (default: all of iperf3, rsync,
                    rsync-ssh, scp that are installed; none for ferry alone)
  --tcp-mem-max B   tcp_wmem/tcp_rmem max in both namespaces, bytes (default 33554432;
                    0 = leave the namespace defaults)
  --ferry-cc M      cell (default): ferry uses the row's cc (--congestion system, when
                    ferry has the flag); default: ferry's own default
  --no-ss           do not sample `ss -tinm` during round 1
  --quick           smoke run: lossy only, 8 MiB random / 16 MiB compressible, 1 round,
                    iperf3 -t 3
  --ferry PATH      ferry binary (default $FERRY_BIN or build/release/tools/ferry)
  --record          append the report to bench/RESULTS.md
  --keep            keep the data folder under /dev/shm
  Environment: LINKEM_DIR (default <project>/../shared/linkem)
EOF
}

scenarios_arg='' cc_arg='' rounds='' size_mib='' target_s='' max_size_mib='' zero_mib='' iperf_s=''
connections='' peers_arg='' tcp_mem_max=33554432 ferry_cc=cell ss_on=1 quick=0 record=0 keep=0
ferry=${FERRY_BIN:-$repo/build/release/tools/ferry}
args_given=$*
while [ $# -gt 0 ]; do
    case $1 in
        --scenarios) scenarios_arg=${2:-}; shift 2 ;;
        --cc) cc_arg=${2:-}; shift 2 ;;
        --rounds) rounds=${2:-}; shift 2 ;;
        --size-mib) size_mib=${2:-}; shift 2 ;;
        --target-s) target_s=${2:-}; shift 2 ;;
        --max-size-mib) max_size_mib=${2:-}; shift 2 ;;
        --zero-size-mib) zero_mib=${2:-}; shift 2 ;;
        --iperf-s) iperf_s=${2:-}; shift 2 ;;
        --connections) connections=${2:-}; shift 2 ;;
        --peers) peers_arg=${2:-}; shift 2 ;;
        --tcp-mem-max) tcp_mem_max=${2:-}; shift 2 ;;
        --ferry-cc) ferry_cc=${2:-}; shift 2 ;;
        --no-ss) ss_on=0; shift ;;
        --quick) quick=1; shift ;;
        --ferry) ferry=${2:-}; shift 2 ;;
        --record) record=1; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# ---- skip when the emulator cannot run -----------------------------------------------
linkem_dir=${LINKEM_DIR:-$repo/../shared/linkem}
netpair=$linkem_dir/netpair
if [ ! -x "$netpair" ]; then
    log "SKIPPED: no WAN emulator: $netpair not found (set LINKEM_DIR to the linkem folder)"
    exit 0
fi
netpair=$(cd "$linkem_dir" && pwd)/netpair
if [ "$(id -u)" != 0 ]; then
    log "SKIPPED: linkem needs root (network namespaces and TUN devices); run as root"
    exit 0
fi

if [ "$quick" = 1 ]; then
    : "${scenarios_arg:=lossy}" "${rounds:=1}" "${size_mib:=8}" "${zero_mib:=16}" "${iperf_s:=3}"
fi
: "${scenarios_arg:=lossy,longfat,slow}" "${cc_arg:=cubic,bbr}" "${rounds:=3}" "${target_s:=10}"
: "${max_size_mib:=1024}" "${zero_mib:=1024}" "${iperf_s:=10}" "${connections:=default,1,4,8}"
for v in rounds target_s max_size_mib zero_mib iperf_s; do
    is_uint "${!v}" || die "--${v//_/-} needs a positive integer, got '${!v}'"
done
[ -z "$size_mib" ] || is_uint "$size_mib" || die "--size-mib needs a positive integer, got '$size_mib'"
[[ $tcp_mem_max =~ ^[0-9]+$ ]] || die "--tcp-mem-max needs a number of bytes, got '$tcp_mem_max'"
if [ "$tcp_mem_max" != 0 ] && [ "$tcp_mem_max" -lt 65536 ]; then die "--tcp-mem-max below 64 KiB makes no sense"; fi
case $ferry_cc in cell|default) ;; *) die "--ferry-cc is cell or default, got '$ferry_cc'" ;; esac
IFS=, read -r -a conn_list <<< "$connections"
for c in "${conn_list[@]}"; do
    [ "$c" = default ] || is_uint "$c" || die "--connections needs positive integers or 'default', got '$connections'"
done

# The scenarios: one-way delay (ms), loss probability, rate (Mbit/s).
declare -A sc_delay=([lossy]=20 [longfat]=50 [slow]=10)
declare -A sc_loss=([lossy]=0.001 [longfat]=0 [slow]=0)
declare -A sc_rate=([lossy]=1000 [longfat]=1000 [slow]=100)
IFS=, read -r -a scenarios <<< "$scenarios_arg"
for sc in "${scenarios[@]}"; do
    [ -n "${sc_rate[$sc]:-}" ] || die "unknown scenario '$sc' (known: lossy, longfat, slow)"
done
IFS=, read -r -a cc_list <<< "$cc_arg"
for cc in "${cc_list[@]}"; do
    grep -qw -- "$cc" /proc/sys/net/ipv4/tcp_available_congestion_control ||
        die "congestion control '$cc' is not available (have: $(cat /proc/sys/net/ipv4/tcp_available_congestion_control))"
done

run_timeout=900          # seconds any single transfer (or listener) may take
listen_wait_polls=3000   # x 10 ms = 30 s for a receiver to report it is listening
host_b=198.18.0.2        # lemB: every receiver and server
on_a=("$netpair" exec A)
on_b=("$netpair" exec B)

# ---- requirements --------------------------------------------------------------------
for tool in timeout awk cmp sync ip ss /usr/bin/time; do
    command -v "$tool" >/dev/null || die "$tool is not installed (make deps)"
done
case $ferry in /*) ;; *) ferry=$PWD/$ferry ;; esac
[ -x "$ferry" ] || die "ferry binary not found at $ferry (make build)"
if [ ! -d /dev/shm ] || [ ! -w /dev/shm ]; then die "/dev/shm is not a writable folder"; fi
# ferry's default: no --connections (up to 4, the ones above the first opened once the
# path calls for them: docs/cli.md). Its runs are "ferry-cdefault".
default_conns=default
# --congestion system on both sides: ferry follows the namespace's cc like the other tools.
ferry_flags=()
if [ "$ferry_cc" = cell ] && "$ferry" send --help 2>&1 | grep -q -- '--congestion'; then ferry_flags=(--congestion system); fi

declare -A peer_needs=([iperf3]="iperf3" [rsync]="rsync" [rsync-ssh]="rsync ssh ssh-keygen /usr/sbin/sshd"
                       [scp]="scp ssh-keygen /usr/sbin/sshd")
all_peers=(iperf3 rsync rsync-ssh scp)
select_peers

# ---- sizes, space and memory ---------------------------------------------------------
# The random pool every scenario's file is cut from: the fixed size, or the largest auto
# size any chosen scenario can need (its link rate for --target-s seconds).
if [ -n "$size_mib" ]; then
    pool_mib=$size_mib
else
    pool_mib=32
    for sc in "${scenarios[@]}"; do
        m=$(( sc_rate[$sc] * 1000000 * target_s / 8 / 1048576 + 1 ))
        [ "$m" -le "$max_size_mib" ] || m=$max_size_mib
        [ "$m" -le "$pool_mib" ] || pool_mib=$m
    done
fi
has_slow=0
for sc in "${scenarios[@]}"; do [ "$sc" != slow ] || has_slow=1; done
zero_bytes=$(( zero_mib * 1048576 ))
[ "$has_slow" = 1 ] || zero_bytes=0
pool_bytes=$(( pool_mib * 1048576 ))
# pool + the scenario's file + the compressible file + the largest destination copy
need=$(( 3 * pool_bytes + 2 * zero_bytes + 64 * 1048576 ))
[ "$(shm_avail)" -ge "$need" ] ||
    die "need $(mib "$need") MiB free in /dev/shm, have $(mib "$(shm_avail)") MiB"
[ "$(mem_avail)" -ge $(( need + 512 * 1048576 )) ] ||
    die "need $(mib $(( need + 512 * 1048576 ))) MiB of available memory, have $(mib "$(mem_avail)") MiB"

# ---- work folder, cleanup ------------------------------------------------------------
data=$(mktemp -d /dev/shm/ferry-wan.XXXXXX)
src=$data/src
dst=$data/dst
logs=$data/logs
samples=$data/ss        # ss samples of round 1, one file per scenario/cc/case/tool
bg_pids=()
ss_pid=
link_up=0

# link_down: kill what still runs inside the two namespaces (only ever processes this
# script started there: it created them), then stop linkem and delete the namespaces.
link_down() {
    local ns pid
    [ "$link_up" = 1 ] || return 0
    for ns in lemA lemB; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    done
    "$netpair" down > "$logs/netpair-down.out" 2>&1 || log "netpair down failed: $(tail -n 1 "$logs/netpair-down.out")"
    link_up=0
}

cleanup() {
    local rc=$?
    trap - INT TERM
    # shellcheck disable=SC2086 # ss_pid: one pid or empty
    stop_pids $ss_pid "${bg_pids[@]}"
    mkdir -p "$logs"
    link_down
    if [ "$rc" -ne 0 ]; then log "stopped with status $rc; servers, link and namespaces torn down"; fi
    drop_data
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$src" "$dst" "$logs" "$samples"
# A copy of the binary: a rebuild in the tree during a long run must not change (or break)
# the ferry being measured.
ferry_src=$ferry
ferry_built=$(date -u -r "$ferry" +%Y-%m-%dT%H:%M:%SZ)
cp "$ferry" "$data/ferry"
ferry=$data/ferry
ferry_sum=$(sha256sum "$ferry" | cut -c1-12)

# ---- data ----------------------------------------------------------------------------
log "creating a $pool_mib MiB random pool$( [ "$zero_bytes" = 0 ] || echo " and a $zero_mib MiB compressible file") in $data"
head -c "$pool_bytes" /dev/urandom > "$src/pool.bin"
if [ "$zero_bytes" -gt 0 ]; then
    # The same text as bench/run.sh's compressible case (zstd and gzip shrink it > 100x).
    { yes 'ferry bench: a highly compressible line of text, repeated 0123456789' || true; } | head -c "$zero_bytes" > "$src/zero.bin"
fi
ferry_ids

# ---- the link ------------------------------------------------------------------------
# link_start SCENARIO CC: a fresh pair with SCENARIO's settings and CC in both namespaces,
# the TCP buffer maxima set; sets link_rtt (ping average, ms) and tcp_mem_in_force.
link_start() {
    local sc=$1 cc=$2 out ns
    out=$("$netpair" up --delay-ms "${sc_delay[$sc]}" --loss "${sc_loss[$sc]}" --rate-mbit "${sc_rate[$sc]}" --cc "$cc" 2>&1) ||
        die "netpair up failed (is another pair up? 'netpair status'): $out"
    link_up=1
    for ns in A B; do
        if [ "$tcp_mem_max" != 0 ]; then
            "$netpair" exec "$ns" sysctl -qw net.ipv4.tcp_wmem="4096 16384 $tcp_mem_max" \
                net.ipv4.tcp_rmem="4096 131072 $tcp_mem_max" || die "could not set tcp_wmem/tcp_rmem in lem$ns"
        fi
        [ "$("$netpair" exec "$ns" sysctl -n net.ipv4.tcp_congestion_control)" = "$cc" ] ||
            die "congestion control in lem$ns is not $cc"
    done
    tcp_mem_in_force="tcp_wmem $("${on_a[@]}" sysctl -n net.ipv4.tcp_wmem | tr -s '\t ' ' '), tcp_rmem $("${on_b[@]}" sysctl -n net.ipv4.tcp_rmem | tr -s '\t ' ' ')"
    link_rtt='n/a (ping not installed)'
    if command -v ping >/dev/null; then
        link_rtt=$("${on_a[@]}" ping -c 5 -i 0.2 -q "$host_b" 2>/dev/null | awk -F/ '/^rtt|^round-trip/ { print $5 " ms (5 pings)" }')
        : "${link_rtt:=n/a (ping failed)}"
    fi
}

# link_counters KEY: reads `netpair status` into link_info[KEY] (a report line) and warns
# when the emulator itself dropped packets (ovf_pkts or TUN tx_dropped > 0).
declare -A link_info
link_overflow=0
link_counters() {
    local key=$1 st line
    st=$("$netpair" status 2>&1) || true
    printf '%s\n' "$st" > "$samples/status-${key//\//-}.txt"
    line=$(awk '
        /^linkem: pid/ { for (i = 1; i <= NF; i++) if ($i == "cpu") { cpu = $(i + 1); sub(/s,$/, "", cpu) } }
        /^dir=/ {
            for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            d = v["dir"]; rx[d] = v["rx_pkts"]; loss[d] = v["loss_pkts"]; qd[d] = v["qdrop_pkts"]; ovf += v["ovf_pkts"]
            if (v["max_backlog_bytes"] > mb) mb = v["max_backlog_bytes"]
        }
        /tx_dropped=/ { for (i = 1; i <= NF; i++) if ($i ~ /^tx_dropped=/) { split($i, kv, "="); txd += kv[2] } }
        END {
            ab = "A->B"; ba = "B->A"
            printf "linkem counted loss %.5f A->B (%d of %d packets), %.5f B->A; queue drops %d A->B, %d B->A; max backlog %.0f KiB; ovf_pkts %d; TUN tx_dropped %d; linkem CPU %s s",
                rx[ab] ? loss[ab] / rx[ab] : 0, loss[ab], rx[ab], rx[ba] ? loss[ba] / rx[ba] : 0, qd[ab], qd[ba], mb / 1024, ovf, txd, cpu
            exit (ovf + txd > 0) ? 3 : 0
        }' <<< "$st") || {
        link_overflow=1
        log "WARNING: $key: the emulator dropped packets itself (ovf_pkts or TUN tx_dropped > 0): the machine, not the emulated link, limited these runs"
    }
    link_info[$key]=$line
}

# ---- ss samples ----------------------------------------------------------------------
# ss_start FILE: samples `ss -tinm` of lemA's sockets to lemB once a second, from 0.5 s on,
# into FILE (only in round 1 and unless --no-ss). ss_stop ends it.
ss_start() {
    [ "$ss_on" = 1 ] && [ "$round" = 1 ] || return 0
    (
        sleep 0.5   # past the handshakes
        while :; do
            printf '# t=%s\n' "${EPOCHREALTIME:-$(date +%s.%N)}"
            "${on_a[@]}" ss -tinm dst "$host_b" 2>/dev/null || true
            sleep 1
        done
    ) > "$1" 2>&1 &
    ss_pid=$!
}
ss_stop() {
    [ -n "$ss_pid" ] || return 0
    kill "$ss_pid" 2>/dev/null || true
    wait "$ss_pid" 2>/dev/null || true
    ss_pid=
}

# ss_summary FILE: one line over the data flows (> 1 MiB acked) of a run's samples: cc,
# flows, median and max cwnd (segments), median smoothed RTT, retransmitted share of the
# bytes sent, the share of busy time limited by the receive window / the send buffer, the
# largest send buffer (skmem tb) and the median unsent bytes (notsent).
ss_summary() {
    [ -s "$1" ] || { echo "-"; return 0; }
    awk '
        function med(a, n,   i, j, t) {
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return n ? ((n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2) : 0
        }
        /^# t=/ { s++; next }
        /^ESTAB/ { flow = $4 " " $5; next }
        /^[ \t]/ && flow != "" {
            acked = 0; cw = ""; rtt = ""; ns = 0
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^(cubic|bbr|bbr2|reno|htcp|vegas|westwood|dctcp)$/) cc[flow] = $i
                else if ($i ~ /^cwnd:/) cw = substr($i, 6) + 0
                else if ($i ~ /^rtt:/) { split(substr($i, 5), r, "/"); rtt = r[1] + 0 }
                else if ($i ~ /^bytes_acked:/) acked = substr($i, 13) + 0
                else if ($i ~ /^bytes_sent:/) sent[flow] = substr($i, 12) + 0
                else if ($i ~ /^bytes_retrans:/) retr[flow] = substr($i, 15) + 0
                else if ($i ~ /^busy:/) { v = substr($i, 6); sub(/ms.*/, "", v); busy[flow] = v + 0 }
                else if ($i ~ /^rwnd_limited:/) { v = substr($i, 14); sub(/ms.*/, "", v); rwnd[flow] = v + 0 }
                else if ($i ~ /^sndbuf_limited:/) { v = substr($i, 16); sub(/ms.*/, "", v); sndb[flow] = v + 0 }
                else if ($i ~ /^notsent:/) ns = substr($i, 9) + 0
                else if ($i ~ /^skmem:/) { if (match($i, /tb[0-9]+/)) { t = substr($i, RSTART + 2, RLENGTH - 2) + 0; if (t > tb[flow]) tb[flow] = t } }
            }
            ack[flow] = acked
            if (cw != "") { n++; cwv[n] = cw; rttv[n] = rtt; nsv[n] = ns; fl[n] = flow }
            flow = ""
        }
        END {
            for (f in ack) if (ack[f] > 1048576) { data[f] = 1; nf++ }
            if (!nf) { print "-"; exit }
            m = 0
            for (i = 1; i <= n; i++) if (fl[i] in data) { m++; c[m] = cwv[i]; r2[m] = rttv[i]; u[m] = nsv[i]; if (cwv[i] > cmax) cmax = cwv[i] }
            for (f in data) { S += sent[f]; R += retr[f]; B += busy[f]; W += rwnd[f]; SB += sndb[f]; if (tb[f] > TB) TB = tb[f]; name = cc[f] }
            mc = med(c, m); mr = med(r2, m); mu = med(u, m)
            printf "%s | %d | %.0f / %.0f | %.1f | %.3f%% | %.0f%% | %.0f%% | %.1f | %.0f\n",
                name, nf, mc, cmax, mr, S ? 100 * R / S : 0, B ? 100 * W / B : 0, B ? 100 * SB / B : 0, TB / 1048576, mu / 1024
        }' "$1"
}

# ---- the runs ------------------------------------------------------------------------
# Each run_* does one run and sets run_mbit (payload Mbit/s) and elapsed (seconds).

# run_iperf3 STREAMS: iperf3 -t, server in lemB, client in lemA; receiver goodput.
run_iperf3() {
    local streams=$1 port pid rc=0 out
    reset_dest
    port=$(( 20000 + RANDOM % 20001 ))
    "${on_b[@]}" "${RT[@]}" "$logs/r-iperf3.rusage" timeout -k 5 "$run_timeout" iperf3 -s -1 -B "$host_b" -p "$port" \
        > "$logs/iperf3-server.out" 2>&1 &
    pid=$!
    bg_pids=("$pid")
    wait_listening "$port" "$pid" iperf3 "$host_b"
    out=$logs/iperf3-client.json
    ss_start "$ss_file"
    "${on_a[@]}" "${RT[@]}" "$logs/s-iperf3.rusage" timeout "$run_timeout" iperf3 -c "$host_b" -p "$port" -P "$streams" \
        -t "$iperf_s" -J > "$out" 2> "$logs/iperf3-client.err" || rc=$?
    ss_stop
    [ "$rc" -eq 0 ] || { show_logs; die "iperf3 client exited with status $rc"; }
    wait_all "$pid"
    # end.sum_received: the receiver's bytes and seconds (the JSON is one key per line).
    read -r elapsed run_mbit <<< "$(awk '
        /"sum_received"/ { on = 1 }
        on && /"seconds"/ { gsub(/[^0-9.eE+-]/, "", $2); s = $2 }
        on && /"bytes"/ { gsub(/[^0-9.eE+-]/, "", $2); b = $2 }
        on && /}/ { on = 0 }
        END { if (s > 0) printf "%.6f %.1f\n", s, b * 8 / s / 1e6 }' "$out")"
    [ -n "${run_mbit:-}" ] || { show_logs; die "no receiver figures in iperf3's JSON output"; }
}

# run_ferry CONNECTIONS PATH: ferry receive in lemB, ferry send in lemA, TLS.
ferry_said=
ferry_saved=
run_ferry() {
    local conns=$1 path=$2 recv_pid addr t0 rc=0 done_line conn_flags=()
    [ "$conns" = default ] || conn_flags=(--connections "$conns")
    reset_dest
    : > "$logs/ferry-receive.out"
    "${on_b[@]}" "${RT[@]}" "$logs/r-ferry.rusage" timeout -k 5 "$run_timeout" "$ferry" receive --state "$data/state-A" \
        --listen "$host_b:0" --accept-from "$id_b" --json "${ferry_flags[@]}" "$dst" > "$logs/ferry-receive.out" 2> "$logs/ferry-receive.err" &
    recv_pid=$!
    bg_pids=("$recv_pid")
    addr=$(ferry_listen_address "$logs/ferry-receive.out" "$recv_pid" "$listen_wait_polls")
    sync
    ss_start "$ss_file"
    stamp; t0=$ts
    "${on_a[@]}" "${RT[@]}" "$logs/s-ferry.rusage" timeout "$run_timeout" "$ferry" send --state "$data/state-B" \
        "${conn_flags[@]}" "${ferry_flags[@]}" --json "$path" "$id_a@$addr" > "$logs/ferry-send.out" 2> "$logs/ferry-send.err" || rc=$?
    ss_stop
    [ "$rc" -eq 0 ] || { show_logs; die "ferry send exited with status $rc"; }
    wait_all "$recv_pid"
    stamp; elapsed=$(sub "$ts" "$t0")
    done_line=$(tail -n 1 "$logs/ferry-send.out")
    ferry_said=$(sed -n 's/.*"payload_MBps": *\([0-9.eE+-]*\).*/\1/p' <<< "$done_line")
    if [ -n "$ferry_said" ]; then ferry_said=$(awk -v v="$ferry_said" 'BEGIN { printf "%.1f", v * 8 }'); fi
    ferry_saved=$(sed -n 's/.*"compression_saved_bytes": *\([0-9]*\).*/\1/p' <<< "$done_line")
}

# run_rsyncd PATH: rsync -a to an rsync daemon in lemB (started for the run, so its CPU and
# memory are measured; not timed).
run_rsyncd() {
    local path=$1 port pid t0 rc=0
    reset_dest
    port=$(( 20000 + RANDOM % 20001 ))
    write_rsyncd_conf
    "${on_b[@]}" "${RT[@]}" "$logs/r-rsyncd.rusage" timeout -k 5 "$run_timeout" rsync --daemon --no-detach \
        --config="$data/rsyncd.conf" --address="$host_b" --port="$port" --log-file="$logs/rsyncd.log" 2> "$logs/rsyncd.err" &
    pid=$!
    bg_pids=("$pid")
    wait_listening "$port" "$pid" "rsync --daemon" "$host_b"
    sync
    ss_start "$ss_file"
    stamp; t0=$ts
    "${on_a[@]}" "${RT[@]}" "$logs/s-rsync.rusage" timeout "$run_timeout" rsync -a "$path" "rsync://$host_b:$port/dst/" \
        2> "$logs/rsync.err" || rc=$?
    stamp; elapsed=$(sub "$ts" "$t0")
    ss_stop
    stop_server "$pid"
    [ "$rc" -eq 0 ] || { show_logs; die "rsync exited with status $rc"; }
}

# run_ssh KIND PATH: KIND rsync-ssh (rsync -a -e ssh) or scp, to an sshd in lemB.
run_ssh() {
    local kind=$1 path=$2 port pid t0 rc=0 ssh_opts
    ssh_setup
    reset_dest
    port=$(( 20000 + RANDOM % 20001 ))
    write_sshd_config "$port" "$host_b"
    "${on_b[@]}" "${RT[@]}" "$logs/r-sshd.rusage" timeout -k 5 "$run_timeout" /usr/sbin/sshd -D -e \
        -f "$data/ssh/sshd_config" 2> "$logs/sshd.err" &
    pid=$!
    bg_pids=("$pid")
    wait_listening "$port" "$pid" sshd "$host_b"
    sync
    ss_start "$ss_file"
    stamp; t0=$ts
    if [ "$kind" = scp ]; then
        # shellcheck disable=SC2086
        "${on_a[@]}" "${RT[@]}" "$logs/s-scp.rusage" timeout "$run_timeout" scp -q -P "$port" ${ssh_opts#"-p $port "} \
            "$path" "root@$host_b:$dst/" 2> "$logs/scp.err" || rc=$?
    else
        "${on_a[@]}" "${RT[@]}" "$logs/s-rsync.rusage" timeout "$run_timeout" rsync -a -e "ssh $ssh_opts" \
            "$path" "root@$host_b:$dst/" 2> "$logs/rsync-ssh.err" || rc=$?
    fi
    stamp; elapsed=$(sub "$ts" "$t0")
    ss_stop
    stop_server "$pid"
    [ "$rc" -eq 0 ] || { show_logs; die "$kind exited with status $rc"; }
}

# ---- the matrix ----------------------------------------------------------------------
file_tools=()
has_peer iperf3 && file_tools+=(iperf3-P1 iperf3-P4)     # first: round 1 sizes the file by -P4
for c in "${conn_list[@]}"; do file_tools+=("ferry-c$c"); done
has_peer rsync && file_tools+=(rsync)
has_peer rsync-ssh && file_tools+=(rsync-ssh)
has_peer scp && file_tools+=(scp)
legacy_tools=()
for t in rsync rsync-ssh scp; do has_peer "$t" && legacy_tools+=("$t"); done

declare -A rates times cpu_s cpu_r rss_s rss_r said saved ss_line cell_bytes cell_rtt cell_mem
cells=()     # "scenario/cc"

# cell_file SCENARIO CC: creates $src/big.bin for this scenario and cc (once): the fixed
# size, or --target-s seconds at the iperf3 -P4 rate of round 1 (the link rate without
# iperf3), within 32 MiB and the pool.
cell_file() {
    local key=$1/$2 mbit bytes
    [ -z "${cell_bytes[$key]:-}" ] || return 0
    if [ -n "$size_mib" ]; then
        bytes=$(( size_mib * 1048576 ))
    else
        mbit=${rates[$key/file/iperf3-P4]:-${sc_rate[$1]}}
        bytes=$(awk -v r="$mbit" -v s="$target_s" -v lo=32 -v hi="$pool_mib" 'BEGIN {
            m = int(r * 1e6 / 8 * s / 1048576 + 0.5); if (m < lo) m = lo; if (m > hi) m = hi; printf "%d", m * 1048576 }')
    fi
    head -c "$bytes" "$src/pool.bin" > "$src/big.bin"
    cell_bytes[$key]=$bytes
    log "$key: random file of $(( bytes / 1048576 )) MiB"
}

# run_one SCENARIO CC CASE TOOL: one run; records the rate, resources and ferry's figures.
run_one() {
    local sc=$1 cc=$2 cs=$3 t=$4 key path bytes
    key=$sc/$cc/$cs/$t
    ss_file=$samples/${key//\//-}.ss
    ferry_said='' ferry_saved='' run_mbit=''
    if [ "$cs" = zero ]; then path=$src/zero.bin bytes=$zero_bytes; else path=$src/big.bin bytes=${cell_bytes[$sc/$cc]:-0}; fi
    case $t in
        iperf3-P*) run_iperf3 "${t#iperf3-P}" ;;
        ferry-c*) run_ferry "${t#ferry-c}" "$path" ;;
        rsync) run_rsyncd "$path" ;;
        rsync-ssh) run_ssh rsync-ssh "$path" ;;
        scp) run_ssh scp "$path" ;;
    esac
    usage_of_run
    if [ -z "$run_mbit" ]; then run_mbit=$(awk -v b="$bytes" -v s="$elapsed" 'BEGIN { printf "%.1f", b * 8 / s / 1e6 }'); fi
    if [ "$round" = 1 ] && [ "${t#iperf3}" = "$t" ]; then
        cmp "$path" "$dst/${path##*/}" || die "$t: $dst/${path##*/} differs from the source"
    fi
    if [ "$round" = 1 ] && [ "$ss_on" = 1 ]; then ss_line[$key]=$(ss_summary "$ss_file"); fi
    rates[$key]+="$run_mbit "
    times[$key]+="$elapsed "
    cpu_s[$key]+="$run_cpu_s "
    cpu_r[$key]+="$run_cpu_r "
    rss_s[$key]=$(awk -v a="${rss_s[$key]:-0}" -v b="$run_rss_s" 'BEGIN { print (b > a) ? b : a }')
    rss_r[$key]=$(awk -v a="${rss_r[$key]:-0}" -v b="$run_rss_r" 'BEGIN { print (b > a) ? b : a }')
    said[$key]+="${ferry_said:--} "
    [ -z "$ferry_saved" ] || saved[$key]=$ferry_saved
    log "$(printf '%-14s round %d/%d  %-5s %-10s %8.2f s %8.1f Mbit/s' "$sc/$cc" "$round" "$rounds" "$cs" "$t" "$elapsed" "$run_mbit")"
}

t_start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
source_rev=$(source_revision)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for sc in "${scenarios[@]}"; do
    for cc in "${cc_list[@]}"; do
        key=$sc/$cc
        cells+=("$key")
        log "$key: link up: delay ${sc_delay[$sc]} ms each way, loss ${sc_loss[$sc]}, ${sc_rate[$sc]} Mbit/s, cc $cc"
        link_start "$sc" "$cc"
        cell_rtt[$key]=$link_rtt
        cell_mem[$key]=$tcp_mem_in_force
        log "$key: ping RTT $link_rtt; $tcp_mem_in_force"
        for round in $(seq 1 "$rounds"); do
            for t in "${file_tools[@]}"; do
                [ "${t#iperf3}" != "$t" ] || cell_file "$sc" "$cc"
                run_one "$sc" "$cc" file "$t"
            done
            if [ "$sc" = slow ]; then run_one "$sc" "$cc" zero "ferry-c$default_conns"; fi
        done
        link_counters "$key"
        log "$key: ${link_info[$key]}"
        link_down
    done
done

# ---- report --------------------------------------------------------------------------
# rate_stats "r1 r2 ...": prints "fastest median" of rates.
rate_stats() {
    tr ' ' '\n' <<< "$1" | awk 'NF' | sort -g |
        awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f %.3f\n", v[NR], m }'
}
median() { read -r _ m <<< "$(rate_stats "$1")"; echo "$m"; }
fmt1() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else printf "-" }'; }

report() {
    local key sc cc t k f m p4 best best_name cpu tools label vs_p4 vs_best ferry_flag_text='' ferry_cc_note=''
    if [ "${#ferry_flags[@]}" -gt 0 ]; then
        ferry_flag_text="${ferry_flags[*]} "
        ferry_cc_note="; ${ferry_flags[*]} on both sides, so that ferry uses the cc of the row"
    elif [ "$ferry_cc" = default ]; then
        ferry_cc_note="; ferry's own congestion control choice (--ferry-cc default)"
    fi
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "## $t_start — WAN (linkem)"
    echo
    echo "- machine: $(uname -srm); ${cpu:-unknown CPU}; $(nproc) CPUs; $(awk '/^MemTotal:/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo); load average at start $load_start"
    echo "- source: $source_rev at the start; ferry binary ${ferry_src#"$repo"/} built $ferry_built (sha256 $ferry_sum...)"
    echo "- run: \`bench/wan.sh $args_given\` — $rounds round(s), tools alternating, data in /dev/shm, sync and empty destination before each run; $(iperf3 --version 2>/dev/null | head -n 1 | cut -d' ' -f1-2), $(rsync --version | head -n 1 | awk '{ print $1, $3 }'), $(ssh -V 2>&1 | cut -d, -f1)"
    echo "- link: linkem (../shared/linkem), lemA 198.18.0.1 (senders) <-> lemB 198.18.0.2 (receivers, servers); MTU 1500; queue linkem's default (max(BDP, 1000 packets)); fresh pair per scenario and cc"
    echo "- TCP buffers: $( [ "$tcp_mem_max" = 0 ] && echo "namespace defaults" || echo "max set to $tcp_mem_max bytes in both namespaces (a tuned server)"); in force: ${cell_mem[${cells[0]}]}"
    echo "- commands (sender in lemA, receiver in lemB): \`iperf3 -s -1\` / \`iperf3 -c 198.18.0.2 -P N -t $iperf_s -J\` (receiver goodput);" \
         "\`ferry receive --listen 198.18.0.2:0 --accept-from ID --json DEST\` / \`ferry send [--connections N] $ferry_flag_text--json PATH ID@ADDR\` (TLS, every other flag at its default; ferry-cdefault: without --connections)$ferry_cc_note;" \
         "\`rsync -a PATH rsync://198.18.0.2:PORT/dst/\` (daemon started per run); \`rsync -a -e ssh\` and \`scp\` to an sshd on 198.18.0.2 (started per run; default ciphers)"
    echo "- rates: Mbit/s = 10^6 payload bits/s; file tools: file size over the time from the sender's start until both sides exited (connection set-up and handshakes included); iperf3: receiver goodput over -t; ratios use medians"
    echo "- resources: every process under /usr/bin/time; CPU = user + system seconds per side (daemons included), median over rounds; RSS = the largest process of each side, max over rounds"
    echo
    for key in "${cells[@]}"; do
        sc=${key%/*} cc=${key#*/}
        echo "- $key: delay ${sc_delay[$sc]} ms each way, loss ${sc_loss[$sc]}, ${sc_rate[$sc]} Mbit/s, cc $cc; ping RTT ${cell_rtt[$key]}; file $(( ${cell_bytes[$key]:-0} / 1048576 )) MiB random$( [ "$sc" = slow ] && echo " + $zero_mib MiB compressible (ferry only)"); ${link_info[$key]:-no counters}"
    done
    if [ "$link_overflow" = 1 ]; then
        echo
        echo "**WARNING**: ovf_pkts or TUN tx_dropped was > 0 in at least one scenario: there the emulator itself (the machine) was a limit, not only the emulated link."
    fi
    echo
    echo "| scenario | cc | case | tool | fastest Mbit/s | median Mbit/s | vs iperf3-P4 | vs best rsync/scp | median wall s | CPU s send / recv | peak RSS MiB send / recv |"
    echo "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for key in "${cells[@]}"; do
        sc=${key%/*} cc=${key#*/}
        p4=$(median "${rates[$key/file/iperf3-P4]:-}")
        best=0 best_name=-
        for t in "${legacy_tools[@]}"; do
            m=$(median "${rates[$key/file/$t]}")
            if awk -v a="$m" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$m best_name=$t; fi
        done
        tools=("${file_tools[@]/#/file/}")
        if [ "$sc" = slow ]; then tools+=("zero/ferry-c$default_conns"); fi
        for t in "${tools[@]}"; do
            k=$key/$t
            read -r f m <<< "$(rate_stats "${rates[$k]}")"
            if [ "${t%%/*}" = zero ]; then
                label="compressible $zero_mib MiB" vs_p4=- vs_best=-
            else
                label="random $(( ${cell_bytes[$key]:-0} / 1048576 )) MiB" vs_p4=$(ratio "$m" "$p4") vs_best=-
                [ "$best_name" = - ] || vs_best="$(ratio "$m" "$best") ($best_name)"
            fi
            printf '| %s | %s | %s | %s | %.1f | %.1f | %s | %s | %.2f | %.2f / %.2f | %.0f / %.0f |\n' "$sc" "$cc" \
                "$label" "${t#*/}" "$f" "$m" "$vs_p4" "$vs_best" "$(median "${times[$k]}")" \
                "$(median "${cpu_s[$k]}")" "$(median "${cpu_r[$k]}")" "${rss_s[$k]}" "${rss_r[$k]}"
        done
    done
    echo
    echo "Issue 5 targets (ferry default = ferry-c$default_conns, medians; the targets are set for the lossy scenario and for the compressible file on the slow link):"
    echo
    for key in "${cells[@]}"; do
        sc=${key%/*}
        k=$key/file/ferry-c$default_conns
        [ -n "${rates[$k]:-}" ] || continue
        m=$(median "${rates[$k]}")
        line="- $key: ferry-c$default_conns $(fmt1 "$m") Mbit/s"
        if [ -n "${rates[$key/file/iperf3-P4]:-}" ]; then
            p4=$(median "${rates[$key/file/iperf3-P4]}")
            line+="; vs iperf3 -P4 ($(fmt1 "$p4")): $(ratio "$m" "$p4") (target >= 0.9x: $(awk -v a="$m" -v b="$p4" 'BEGIN { print (a >= 0.9 * b) ? "met" : "NOT met" }'))"
        fi
        for t in "${legacy_tools[@]}"; do
            p4=$(median "${rates[$key/file/$t]}")
            line+="; vs $t ($(fmt1 "$p4")): $(ratio "$m" "$p4")$( [ "$sc" = lossy ] && awk -v a="$m" -v b="$p4" 'BEGIN { print (a >= 3 * b) ? " (>= 3x: met)" : " (>= 3x: NOT met)" }')"
        done
        echo "$line"
        if [ "$sc" = slow ]; then
            m=$(median "${rates[$key/zero/ferry-c$default_conns]}")
            echo "- $key: compressible $zero_mib MiB, ferry-c$default_conns $(fmt1 "$m") Mbit/s = $(ratio "$m" "${sc_rate[$sc]}") the link rate (target >= 3x: $(awk -v a="$m" -v b="${sc_rate[$sc]}" 'BEGIN { print (a >= 3 * b) ? "met" : "NOT met" }')); compression_saved_bytes ${saved[$key/zero/ferry-c$default_conns]:-?}"
        fi
    done
    if [ "$ss_on" = 1 ]; then
        echo
        echo "Sender sockets in round 1 (\`ss -tinm\` in lemA once a second; data flows only): cwnd in segments (median / max over samples), smoothed RTT (median), retransmitted bytes / bytes sent, share of busy time limited by the receiver's window (rwnd) and by the send buffer (sndbuf), largest send buffer (skmem tb), median unsent bytes in the socket (notsent):"
        echo
        echo "| scenario | cc | case | tool | cc seen | flows | cwnd med / max | rtt ms | retrans | rwnd-limited | sndbuf-limited | sndbuf MiB | notsent KiB |"
        echo "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for key in "${cells[@]}"; do
            sc=${key%/*} cc=${key#*/}
            tools=("${file_tools[@]/#/file/}")
            if [ "$sc" = slow ]; then tools+=("zero/ferry-c$default_conns"); fi
            for t in "${tools[@]}"; do
                f=${ss_line[$key/$t]:--}
                if [ "$f" = - ]; then f="- | - | - | - | - | - | - | - | -"; fi
                echo "| $sc | $cc | ${t%%/*} | ${t#*/} | $f |"
            done
        done
    fi
    echo
    if [ "${#skipped_peers[@]}" -gt 0 ]; then
        echo "Skipped: ${skipped_peers[*]}."
        echo
    fi
    echo "Raw rates (Mbit/s), in run order:"
    echo
    for key in "${cells[@]}"; do
        sc=${key%/*}
        tools=("${file_tools[@]/#/file/}")
        if [ "$sc" = slow ]; then tools+=("zero/ferry-c$default_conns"); fi
        for t in "${tools[@]}"; do
            echo "- $key, ${t%%/*}, ${t#*/}: ${rates[$key/$t]}(wall s: ${times[$key/$t]})"
            case $t in */ferry-*) echo "  (ferry's own payload Mbit/s: ${said[$key/$t]})" ;; esac
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
