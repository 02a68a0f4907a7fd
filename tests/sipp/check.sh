#!/usr/bin/env bash
# tests/sipp/check.sh - end-to-end check of the built sipedge binary with sipp.
#
# Usage: tests/sipp/check.sh [SIPEDGE_BINARY]
#        (default: target/release/sipedge of this checkout; build it first
#        with `cargo build --release`)
#
# Topology (loopback only, ports picked at random in 20000-40000, retried):
#
#   UAC sipp ("trunk") --> sipedge --> UAS "A" sipp ("FreeSWITCH" A)
#                                  \-> UAS "B" sipp ("FreeSWITCH" B)
#
# Case A "calls":    both nodes healthy (uas.xml). $SIPP_CHECK_CALLS (300)
#                    calls at $SIPP_CHECK_RATE (50) cps: INVITE, ACK, T.38
#                    re-INVITE, ACK, BYE. Every call must succeed, re-INVITE
#                    and BYE must reach the node that answered the INVITE
#                    (X-Node check in uac.xml), both nodes get calls (round
#                    robin), the nodes see no failed call (e.g. missing ACK).
# Case B "failover": node A answers every INVITE with 503 (uas_503.xml), B is
#                    healthy. $SIPP_CHECK_FAILOVER_CALLS (100) calls: every
#                    call must succeed on B, A must have sent at least one 503
#                    (the failover path ran) and have got the hop-by-hop ACK
#                    for each of them.
# Case C "tcp-trunk": as case A, but the trunk speaks SIP over TCP (sipp
#                    -t t1) to sipedge's TCP listener; the nodes stay on UDP
#                    (sipedge bridges, with a double Record-Route).
#                    $SIPP_CHECK_TCP_CALLS (300) calls.
# In both cases the proxy must stay up and exit 0 on SIGTERM.
#
# Output: one "PASS <case>: ..." or "FAIL <case>: ..." line per case, and a
# last line "N passed, M failed". Exit status 0 only when every case passed.
# On failure the work directory (sipp error logs, per-call log, proxy log)
# is kept and its path printed; SIPP_CHECK_KEEP=1 keeps it in any case.
#
# Scenarios (next to this script, copied from ../shared/sipbench/scenarios):
# uac.xml (trunk), uas.xml (healthy node), uas_503.xml (node answering 503).
# Tunables: SIPP_CHECK_CALLS, SIPP_CHECK_RATE, SIPP_CHECK_FAILOVER_CALLS,
# SIPP_CHECK_TCP_CALLS.
# Runtime: about 30 s (each proxy stop waits for sipedge's drain).
#
# Needs: bash, sipp (installed with apt-get from sip-tester when missing),
# timeout, ss, ps, awk. Every process is started here, bounded in time (sipp
# -timeout, an outer `timeout`) and stopped by pid on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# default: the release build of this checkout, whatever the current directory
BIN=${1:-$HERE/../../target/release/sipedge}
CALLS=${SIPP_CHECK_CALLS:-300}
RATE=${SIPP_CHECK_RATE:-50}
FO_CALLS=${SIPP_CHECK_FAILOVER_CALLS:-100}
TCP_CALLS=${SIPP_CHECK_TCP_CALLS:-300}
PAUSE_MS=500          # talk time between ACK and re-INVITE (uas.xml needs >= 100)
RECV_TIMEOUT_MS=5000  # per-response timeout in the UAC
IP=127.0.0.1

log() { echo "[sipp-check $(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 2; }

for n in "$CALLS" "$RATE" "$FO_CALLS" "$TCP_CALLS"; do
    if ! [[ "$n" =~ ^[0-9]+$ ]] || (( n < 1 || n > 100000 )); then die "bad number '$n'"; fi
done
[ -x "$BIN" ] || die "no executable sipedge binary at '$BIN' (cargo build --release first)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
for f in uac.xml uas.xml uas_503.xml; do
    [ -r "$HERE/$f" ] || die "missing scenario $HERE/$f"
done

if ! command -v sipp >/dev/null 2>&1; then
    log "sipp not found: installing sip-tester"
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y sip-tester
    else
        sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y sip-tester
    fi
fi
command -v sipp >/dev/null 2>&1 || die "sipp still missing after installing sip-tester"
for t in timeout ss ps awk; do
    command -v "$t" >/dev/null 2>&1 || die "'$t' is needed"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sipedge-sipp.XXXXXX")
PIDS=()

# ---- process hygiene ---------------------------------------------------------
# stop a process and its descendants (by pid), TERM first, KILL after 5 s
descendants() {
    local c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$c"
        descendants "$c"
    done
}
# (every root is a `timeout` wrapper: it passes the TERM on to its command)
stop_tree() {
    local root=$1 p i all
    kill -0 "$root" 2>/dev/null || { wait "$root" 2>/dev/null || true; return 0; }
    all="$(descendants "$root") $root"
    kill -TERM "$root" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$root" 2>/dev/null || break
        sleep 0.1
    done
    for p in $all; do kill -KILL "$p" 2>/dev/null || true; done
    wait "$root" 2>/dev/null || true
}
cleanup() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_tree "${PIDS[$i]}"; done
    PIDS=()
}
KEEP=${SIPP_CHECK_KEEP:-0}
on_exit() {
    local rc=$?
    cleanup
    if (( rc == 0 )) && [ "$KEEP" != 1 ]; then
        rm -rf "$WORK"
    elif [ "$KEEP" != reported ]; then
        log "work directory kept: $WORK"
    fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ---- ports -------------------------------------------------------------------
# Random ports in 20000-40000 that nothing listens on right now (UDP or TCP);
# a start that loses a race for a port is retried with new ports.
pick_ports() {   # pick_ports N -> sets PORTS=(...)
    local used p
    used=" $(ss -Hlun 2>/dev/null | awk '{n=split($4,a,":"); print a[n]}' | tr '\n' ' ') "
    used+=" $(ss -Hltn 2>/dev/null | awk '{n=split($4,a,":"); print a[n]}' | tr '\n' ' ') "
    PORTS=()
    while (( ${#PORTS[@]} < $1 )); do
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 20001 ))
        [[ "$used" == *" $p "* ]] && continue
        used+=" $p "
        PORTS+=("$p")
    done
}

# pids (one per line) of the UDP sockets bound to IP:PORT
port_owners() {
    ss -Hlunp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u
}

# Wait until PORT is bound by PID or one of its children (PID is a
# `timeout` wrapper), and by nobody else. Returns 0 when it is, 3 when
# another process has (or shares) the port, 1 when PID exited or the wait
# timed out.
wait_bound_by() {
    local port=$1 pid=$2 secs=$3 i owners o
    for ((i = 0; i < secs * 10; i++)); do
        owners=$(port_owners "$port")
        if [ -n "$owners" ]; then
            for o in $owners; do
                [ "$o" = "$pid" ] || [ "$(ps -o ppid= -p "$o" 2>/dev/null | tr -d ' ')" = "$pid" ] \
                    || return 3
            done
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# ---- processes -----------------------------------------------------------------
# start_uas NAME PORT SCENARIO DIR -> UAS_PID; the node's responses carry
# "X-Node: NAME"; its final screens (counters) land in DIR/uas_NAME.out
start_uas() {
    local name=$1 port=$2 scen=$3 dir=$4
    cp "$HERE/$scen" "$dir/uas_$name.xml"
    ( cd "$dir" && exec timeout -k 5 180 sipp -sf "uas_$name.xml" -i "$IP" -p "$port" \
        -key node "$name" -nostdin -timeout 170s \
        -trace_err -error_file "uas_${name}_errors.log" \
        >"uas_$name.out" 2>&1 ) &
    UAS_PID=$!
    PIDS+=("$UAS_PID")
    local rc=0
    wait_bound_by "$port" "$UAS_PID" 10 || rc=$?
    (( rc != 1 )) || ! grep -qi 'bind' "$dir/uas_$name.out" 2>/dev/null || rc=3
    return "$rc"
}

# start_proxy PORT PORT_A PORT_B DIR -> PROXY_PID
start_proxy() {
    local port=$1 pa=$2 pb=$3 dir=$4 i
    cat >"$dir/sipedge.toml" <<EOF
[listen]
udp = ["$IP:$port"]
tcp = ["$IP:$port"]
advertise = "$IP:$port"

[dispatcher]
algorithm = "round-robin"
[[dispatcher.destination]]
uri = "sip:$IP:$pa"
[[dispatcher.destination]]
uri = "sip:$IP:$pb"

[failover]
fr_timeout = "1s"
fr_inv_timeout = "10s"
codes = [500, 502, 503, 504]
EOF
    "$BIN" check-config "$dir/sipedge.toml" >"$dir/check-config.out" 2>&1 \
        || { cat "$dir/check-config.out" >&2; die "sipedge refused the generated config"; }
    # -k 20: a SIGTERM passed on by `timeout` turns into SIGKILL after -k
    # seconds, and sipedge may drain for up to 10 s
    timeout -k 20 240 "$BIN" --config "$dir/sipedge.toml" >"$dir/proxy.out" 2>"$dir/proxy.err" &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    for ((i = 0; i < 100; i++)); do
        grep -q '^listening on udp:' "$dir/proxy.out" 2>/dev/null && break
        kill -0 "$PROXY_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    grep -q '^listening on udp:' "$dir/proxy.out" || return 1
    wait_bound_by "$port" "$PROXY_PID" 5
}

# Stop the proxy with SIGTERM; it must exit 0 within 15 s (it drains
# INVITE transactions for up to 10 s). Sets PROXY_RC and PROXY_STOP_S.
stop_proxy() {
    local i rc=0
    PROXY_STOP_S=-
    kill -0 "$PROXY_PID" 2>/dev/null || { wait "$PROXY_PID" || rc=$?; PROXY_RC="died($rc)"; return 1; }
    kill -TERM "$PROXY_PID"
    for ((i = 0; i < 150; i++)); do
        kill -0 "$PROXY_PID" 2>/dev/null || break
        sleep 0.1
    done
    PROXY_STOP_S="$((i / 10)).$((i % 10))"
    if kill -0 "$PROXY_PID" 2>/dev/null; then
        stop_tree "$PROXY_PID"
        PROXY_RC="hung"
        return 1
    fi
    wait "$PROXY_PID" || rc=$?
    PROXY_RC=$rc
    (( rc == 0 ))
}

# Counters from the final screens sipp prints when it stops:
#   screen_count FILE ok|failed|out:NAME|in:NAME
screen_count() {
    awk -v what="$2" '
        /Successful call/ && /\|/ { n = split($0, a, "|"); ok = a[n] + 0 }
        /Failed call/ && /\|/     { n = split($0, a, "|"); failed = a[n] + 0 }
        $1 ~ /^<-+$/ && $3 ~ /^[0-9]+$/ { out[$2] = $3 }
        $1 ~ /^-+>$/ && $3 ~ /^[0-9]+$/ { inn[$2] = $3 }
        END {
            if (what == "ok") print ok + 0
            else if (what == "failed") print failed + 0
            else if (what ~ /^out:/) print out[substr(what, 5)] + 0
            else if (what ~ /^in:/) print inn[substr(what, 4)] + 0
        }' "$1" 2>/dev/null || echo 0
}

# Last (cumulative) value of a column of sipp's stat.csv
stat_value() {
    awk -F';' -v col="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        NF > 1 { v = $c }
        END { print (c && v != "") ? v + 0 : -1 }' "$1" 2>/dev/null || echo -1
}

# ---- one case --------------------------------------------------------------------
PASSED=0 FAILED=0
RESULT_MSG=""

# run_case_once NAME SCEN_A CALLS DIR TRANSPORT -> 0 pass, 1 fail (RESULT_MSG),
# 3 setup lost a port race. TRANSPORT (udp or tcp) is the trunk's.
run_case_once() {
    local name=$1 scen_a=$2 calls=$3 dir=$4 transport=$5 hard uac_rc=0 p_proxy p_uac p_a p_b
    local t_flag=u1
    [ "$transport" = tcp ] && t_flag=t1
    local ok failed calls_ok calls_fail sticky_bad by_a by_b a_ok a_failed b_ok b_failed a_503
    local uas_a="" uas_b=""
    local problems=()
    rm -rf "$dir"; mkdir -p "$dir"
    pick_ports 4
    p_proxy=${PORTS[0]} p_uac=${PORTS[1]} p_a=${PORTS[2]} p_b=${PORTS[3]}
    echo "proxy=$p_proxy uac=$p_uac uas_A=$p_a uas_B=$p_b" >"$dir/ports.txt"

    local rc=0 n
    for n in A B; do
        if [ $n = A ]; then start_uas A "$p_a" "$scen_a" "$dir" || rc=$?
        else start_uas B "$p_b" uas.xml "$dir" || rc=$?; fi
        (( rc == 0 )) || break
        if [ $n = A ]; then uas_a=$UAS_PID; else uas_b=$UAS_PID; fi
    done
    if (( rc != 0 )); then
        cleanup
        (( rc == 3 )) && return 3
        RESULT_MSG="sipp UAS $n did not start: $(tail -n 3 "$dir/uas_$n.out" | tr '\n' ' ')"
        return 1
    fi
    start_proxy "$p_proxy" "$p_a" "$p_b" "$dir" || rc=$?
    if (( rc != 0 )); then
        cleanup
        if (( rc == 3 )) || grep -q 'cannot bind' "$dir/proxy.err" 2>/dev/null; then return 3; fi
        RESULT_MSG="proxy did not start: $(tail -n 3 "$dir/proxy.err" | tr '\n' ' ')"
        return 1
    fi

    cp "$HERE/uac.xml" "$dir/uac.xml"
    # wall-clock bound: placing the calls, one call, and slack for timeouts
    hard=$(( (calls + RATE - 1) / RATE + PAUSE_MS / 1000 + 2 * RECV_TIMEOUT_MS / 1000 + 15 ))
    log "$name: $calls calls at $RATE cps over $transport through sipedge on $IP:$p_proxy (limit ${hard}s)"
    ( cd "$dir" && exec timeout -k 5 "$hard" sipp "$IP:$p_proxy" -sf uac.xml -i "$IP" -p "$p_uac" \
        -t "$t_flag" \
        -r "$RATE" -rp 1000 -m "$calls" -l $(( RATE * 10 + 50 )) -d "$PAUSE_MS" \
        -recv_timeout "$RECV_TIMEOUT_MS" -timeout "$(( hard - 5 ))s" -timeout_error \
        -nostdin \
        -trace_stat -stf stat.csv -fd 1 \
        -trace_logs -log_file calls.log \
        -trace_err -error_file uac_errors.log \
        -trace_screen -screen_file uac_screen.log \
        >uac.out 2>&1 ) &
    local uac=$!
    PIDS+=("$uac")
    wait "$uac" || uac_rc=$?
    if (( uac_rc == 254 )) && grep -qi 'bind' "$dir/uac.out" "$dir/uac_errors.log" 2>/dev/null; then
        cleanup; return 3
    fi

    # the proxy must have survived the load and must stop cleanly
    stop_proxy || problems+=("proxy exit on SIGTERM: $PROXY_RC (want 0)")
    # SIGTERM makes each UAS print its final counters
    stop_tree "$uas_a"; stop_tree "$uas_b"
    cleanup

    ok=$(stat_value "$dir/stat.csv" 'SuccessfulCall(C)')
    failed=$(stat_value "$dir/stat.csv" 'FailedCall(C)')
    calls_ok=$(grep -c '^OK ' "$dir/calls.log" 2>/dev/null || true)
    calls_fail=$(grep -c '^FAIL ' "$dir/calls.log" 2>/dev/null || true)
    sticky_bad=$(awk '/^OK / { n1 = n2 = n3 = ""
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^n1=/) n1 = substr($i, 4)
                if ($i ~ /^n2=/) n2 = substr($i, 4)
                if ($i ~ /^n3=/) n3 = substr($i, 4) }
            if (n1 == "" || n1 != n2 || n1 != n3) bad++ }
        END { print bad + 0 }' "$dir/calls.log" 2>/dev/null || echo "?")
    by_a=$(grep -c '^OK .* n1=A ' "$dir/calls.log" 2>/dev/null || true)
    by_b=$(grep -c '^OK .* n1=B ' "$dir/calls.log" 2>/dev/null || true)
    a_ok=$(screen_count "$dir/uas_A.out" ok); a_failed=$(screen_count "$dir/uas_A.out" failed)
    b_ok=$(screen_count "$dir/uas_B.out" ok); b_failed=$(screen_count "$dir/uas_B.out" failed)
    # sipedge's OPTIONS probes end as successful sipp "calls" on the nodes
    # (OPTIONS -> 200): count calls without them.
    a_probes=$(screen_count "$dir/uas_A.out" in:OPTIONS)
    b_probes=$(screen_count "$dir/uas_B.out" in:OPTIONS)
    (( a_probes > 0 && b_probes > 0 )) || problems+=("nodes probed: A $a_probes, B $b_probes (want both)")
    a_ok=$(( a_ok - a_probes )); b_ok=$(( b_ok - b_probes ))
    a_503=$(screen_count "$dir/uas_A.out" out:503)

    (( uac_rc == 0 )) || problems+=("sipp UAC exit status $uac_rc")
    (( ok == calls )) || problems+=("successful calls $ok of $calls")
    (( failed == 0 )) || problems+=("failed calls $failed")
    (( calls_ok == calls && calls_fail == 0 )) \
        || problems+=("calls.log: $calls_ok OK, $calls_fail FAIL")
    [ "$sticky_bad" = 0 ] || problems+=("re-INVITE/BYE on another node than the INVITE: $sticky_bad calls")
    (( a_failed == 0 && b_failed == 0 )) \
        || problems+=("calls failed on the nodes: A $a_failed, B $b_failed")
    if [ "$scen_a" = uas.xml ]; then
        (( by_a > 0 && by_b > 0 )) || problems+=("round robin: A answered $by_a, B $by_b")
        (( a_ok + b_ok == calls )) || problems+=("nodes completed $a_ok + $b_ok calls, want $calls")
    else
        (( by_a == 0 && by_b == calls )) || problems+=("answered by A $by_a, by B $by_b (want all on B)")
        (( a_503 > 0 )) || problems+=("node A sent no 503: failover path not exercised")
        (( a_ok == a_503 )) || problems+=("node A: $a_503 x 503 sent but $a_ok ACKed")
        (( b_ok == calls )) || problems+=("node B completed $b_ok calls, want $calls")
    fi

    local facts="calls=$calls ok=$ok failed=$failed sticky_mismatch=$sticky_bad answered_A=$by_a answered_B=$by_b"
    facts+=" uas_A_ok=$a_ok uas_A_failed=$a_failed uas_B_ok=$b_ok uas_B_failed=$b_failed"
    facts+=" probes_A=$a_probes probes_B=$b_probes"
    [ "$scen_a" = uas.xml ] || facts+=" A_503_sent=$a_503"
    facts+=" proxy_exit=$PROXY_RC proxy_stop_s=$PROXY_STOP_S"
    if (( ${#problems[@]} == 0 )); then
        RESULT_MSG=$facts
        return 0
    fi
    RESULT_MSG="$(IFS=';'; echo "${problems[*]}") -- $facts"
    return 1
}

# Show what went wrong in the CI log (the full files stay in $WORK).
show_failure() {
    local dir=$1 f
    for f in calls.log uac_errors.log uas_A_errors.log uas_B_errors.log proxy.err; do
        [ -s "$dir/$f" ] || continue
        echo "----- $dir/$f (failures / last lines)"
        case $f in
            calls.log) grep '^FAIL ' "$dir/$f" | head -n 20 || true ;;
            proxy.err) tail -n 20 "$dir/$f" ;;
            *) head -n 40 "$dir/$f" ;;   # the first errors are the telling ones
        esac
    done
}

run_case() {
    local name=$1 scen_a=$2 calls=$3 transport=${4:-udp} attempt rc
    local dir="$WORK/$name"
    for attempt in 1 2 3; do
        rc=0
        run_case_once "$name" "$scen_a" "$calls" "$dir" "$transport" || rc=$?
        (( rc == 3 )) || break
        log "$name: lost a race for a port (attempt $attempt), retrying with other ports"
        RESULT_MSG="could not bind the test ports in 3 attempts"
        rc=1
    done
    if (( rc == 0 )); then
        echo "PASS $name: $RESULT_MSG"
        PASSED=$((PASSED + 1))
    else
        echo "FAIL $name: $RESULT_MSG"
        show_failure "$dir"
        FAILED=$((FAILED + 1))
    fi
}

START=$SECONDS
log "sipedge binary: $BIN; $(sipp -v 2>/dev/null | grep -o 'SIPp v[^ ]*' | head -n 1); work dir $WORK"
run_case calls uas.xml "$CALLS"
run_case failover uas_503.xml "$FO_CALLS"
run_case tcp-trunk uas.xml "$TCP_CALLS" tcp
log "done in $(( SECONDS - START ))s"
if (( FAILED > 0 )) || [ "$KEEP" = 1 ]; then
    log "work directory kept: $WORK"
    KEEP=reported
fi
echo "$PASSED passed, $FAILED failed"
(( FAILED == 0 ))
