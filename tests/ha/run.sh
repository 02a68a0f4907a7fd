#!/usr/bin/env bash
# tests/ha/run.sh - two sipedge instances behind a keepalived VIP; the
# master's sipedge is killed in the middle of a call load.
#
# Usage: tests/ha/run.sh [SIPEDGE_BINARY]     (needs root: ip netns)
#        default binary: target/release/sipedge of this checkout.
#
# Topology: network namespaces created (and deleted) by this script, all
# on one Linux bridge in a namespace of its own, addresses from TEST-NET-1:
#
#   trunk 192.0.2.31 (sipp UAC) --.
#   A     192.0.2.11 sipedge + keepalived (MASTER, 150) --+-- bridge
#   B     192.0.2.12 sipedge + keepalived (BACKUP, 100) --|
#   node1 192.0.2.21 (sipp UAS "N1") ---------------------|
#   node2 192.0.2.22 (sipp UAS "N2") ---------------------'
#   VIP   192.0.2.100:5060 (both sipedge listen on it, freebind)
#
# keepalived runs deploy/keepalived/keepalived.conf as shipped (only the
# state, priority, VIP and script paths replaced) with the scripts next to
# it, each against its own sipedge's admin port inside its namespace.
#
# The run: the trunk places $HA_CALLS calls at $HA_RATE cps, each INVITE,
# ACK, $HA_PAUSE_MS talk time, T.38 re-INVITE, ACK, BYE (uac.xml; every
# in-dialog request must reach the node that answered the INVITE). Once A
# holds $HA_KILL_AT_DIALOGS dialogs, A's sipedge gets SIGKILL. The trunk
# retransmits like any UDP UA (sipp: 500 ms doubling) and waits
# $HA_RECV_TIMEOUT_MS for each answer.
#
# Checks (exit 1 when one fails):
#   - the VIP moves to B, and the trunk's and nodes' ARP entries for it name
#     B's MAC (gratuitous ARP across the bridge);
#   - a call placed after the move succeeds within advert_int (1 s) of it;
#   - no established call is lost: calls answered before the kill complete
#     their re-INVITE and BYE through B, on the node that answered;
#   - new calls lost <= $HA_MAX_NEW_LOST (default 0: the trunk's INVITE
#     retransmissions reach B once it holds the VIP);
#   - every INVITE reached one node once, and no node was left with a half
#     call (calls in setup at the very instant of the kill are counted and
#     printed, not failed on: see "in setup" below);
#   - A's sipedge restarted: its track script pauses its probing (A is the
#     standby), A takes the VIP back, and calls go through it.
# Prints a last line "PASS ha: <figures>" (calls lost by kind, vip_move_s
# from the kill to the VIP on B, first_new_call_s from the kill to the
# first call placed after it answered, failback_s, ...) or
# "FAIL ha: <problems> -- <figures>"; exit 1 when a check fails, 2 when the
# set-up fails (with the reason).
#
# Without root or `ip netns` it prints "SKIP ..." to stderr and exits 77
# (never a silent pass). Needs keepalived, sipp (sip-tester), curl,
# iproute2: installed with apt-get when missing.
# Runtime: about 45 s. Every process runs inside a namespace of this run and
# under `timeout`; the namespaces (and whatever still runs in them) are
# removed on exit, failure included. HA_KEEP=1 keeps the work directory;
# HA_EXTRA_TOML is appended to both sipedge configs (e.g. a [cluster]
# section).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${1:-$REPO/target/release/sipedge}
CALLS=${HA_CALLS:-600}
RATE=${HA_RATE:-25}
PAUSE_MS=${HA_PAUSE_MS:-4000}
RECV_TIMEOUT_MS=${HA_RECV_TIMEOUT_MS:-20000}
KILL_AT_DIALOGS=${HA_KILL_AT_DIALOGS:-80}
MAX_NEW_LOST=${HA_MAX_NEW_LOST:-0}
KEEP=${HA_KEEP:-0}
KEEPALIVED_DIR=$REPO/deploy/keepalived

NET=192.0.2
VIP=$NET.100
SIP_PORT=5060
NODE_PORT=5080
ADMIN=127.0.0.1:9090
ADVERT_INT_S=1   # advert_int in the shipped conf (checked below)

log() { echo "[ha $(date +%H:%M:%S.%N | cut -c1-12)] $*" >&2; }
die() { log "ERROR: $*"; exit 2; }
skip() { echo "SKIP ha: $* -- the keepalived failover test did NOT run" >&2; exit 77; }

for n in "$CALLS" "$RATE" "$PAUSE_MS" "$RECV_TIMEOUT_MS" "$KILL_AT_DIALOGS" "$MAX_NEW_LOST"; do
    [[ "$n" =~ ^[0-9]+$ ]] && (( n <= 1000000 )) || die "bad number '$n'"
done
(( RATE >= 1 && CALLS >= RATE * 8 )) || die "need at least 8 s of calls (HA_CALLS >= 8 x HA_RATE)"

[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces)"
PATH=$PATH:/usr/sbin:/sbin
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v keepalived >/dev/null 2>&1 || [ -x /usr/sbin/keepalived ] || missing+=(keepalived)
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if (( ${#missing[@]} > 0 )); then
    log "installing ${missing[*]}"
    apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null
fi
for t in ip keepalived sipp curl timeout awk; do
    command -v "$t" >/dev/null 2>&1 || die "'$t' is needed"
done
[ -x "$BIN" ] || die "no executable sipedge binary at '$BIN' (cargo build --release first)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
for f in uac.xml uas.xml; do [ -r "$HERE/$f" ] || die "missing scenario $HERE/$f"; done
for f in keepalived.conf sipedge-ready.sh sipedge-notify.sh; do
    [ -r "$KEEPALIVED_DIR/$f" ] || die "missing $KEEPALIVED_DIR/$f"
done

# Namespace names unique to this run (pid + random); a probe namespace
# tells whether `ip netns` works here at all.
RUN=sipedge-ha-$$-$RANDOM
ip netns add "$RUN-probe" 2>/dev/null || skip "ip netns add fails here (no CAP_SYS_ADMIN?)"
ip netns del "$RUN-probe"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sipedge-ha.XXXXXX")
chmod 755 "$WORK"
cd "$WORK"   # sipp writes its logs next to its scenario
NSS=()

# ---- clean-up: everything lives in our namespaces ---------------------------
cleanup() {
    local ns pids i
    for ns in "${NSS[@]}"; do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] || kill -TERM $pids 2>/dev/null || true
    done
    for ((i = 0; i < 30; i++)); do
        pids=""
        for ns in "${NSS[@]}"; do pids+=$(ip netns pids "$ns" 2>/dev/null || true); done
        [ -z "$pids" ] && break
        sleep 0.1
    done
    for ns in "${NSS[@]}"; do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    NSS=()
    wait 2>/dev/null || true
}
on_exit() {
    local rc=$?
    cleanup
    if (( rc == 0 )) && [ "$KEEP" != 1 ]; then
        rm -rf "$WORK"
    else
        log "work directory kept: $WORK"
    fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ---- network -------------------------------------------------------------------
BR=$RUN-br
addns() { ip netns add "$1"; NSS+=("$1"); ip -n "$1" link set lo up; }
# attach NS IP: veth "eth0" in NS, its peer enslaved to the bridge
attach() {
    local ns=$1 addr=$2 port=p${#NSS[@]}
    ip -n "$BR" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$BR" link set "$port" master br0 up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
}
addns "$BR"
ip -n "$BR" link add br0 type bridge
ip -n "$BR" link set br0 up
NS_A=$RUN-a NS_B=$RUN-b NS_N1=$RUN-n1 NS_N2=$RUN-n2 NS_T=$RUN-trunk
addns "$NS_A";  attach "$NS_A" "$NET.11"
addns "$NS_B";  attach "$NS_B" "$NET.12"
addns "$NS_N1"; attach "$NS_N1" "$NET.21"
addns "$NS_N2"; attach "$NS_N2" "$NET.22"
addns "$NS_T";  attach "$NS_T" "$NET.31"
# the bridge forwards at once (no STP listening delay)
ip -n "$BR" link set br0 type bridge forward_delay 0 stp_state 0
MAC_B=$(ip -n "$NS_B" -o link show eth0 | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
log "namespaces $RUN-*: bridge, a, b, n1, n2, trunk; VIP $VIP; B's MAC $MAC_B; work dir $WORK"

# ---- processes -------------------------------------------------------------------
# in NS: timeout-bounded command in the background, output to FILE; sets LAST_PID
# (`ip netns exec` execs, so the pid is the `timeout` wrapper's)
start_in() {
    local ns=$1 out=$2 limit=$3; shift 3
    ip netns exec "$ns" timeout -k 3 "$limit" "$@" >"$out" 2>&1 &
    LAST_PID=$!
}
# the pid of the command a `timeout` wrapper runs
child_of() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' | head -n 1; }

# Each instance's sipedge config; HA_EXTRA_TOML is appended (e.g. a
# `[cluster]` section) so both instances get the same extra keys.
write_sipedge_conf() {
    cat >"$1" <<EOF
[listen]
udp = ["$VIP:$SIP_PORT"]
advertise = "$VIP"
# the standby binds the VIP before it holds it
freebind = true

[dispatcher]
algorithm = "round-robin"
[[dispatcher.destination]]
uri = "sip:$NET.21:$NODE_PORT"
[[dispatcher.destination]]
uri = "sip:$NET.22:$NODE_PORT"

[failover]
fr_timeout = "1s"
fr_inv_timeout = "10s"

[admin]
listen = "$ADMIN"
${HA_EXTRA_TOML:-}
EOF
    "$BIN" check-config "$1" >"$1.check" 2>&1 || { cat "$1.check" >&2; die "sipedge refused $1"; }
}

# The shipped keepalived.conf with this instance's state, priority, VIP and
# script paths. Each replacement must hit, so a changed template fails here
# rather than testing something else.
write_keepalived_conf() {
    local out=$1 state=$2 prio=$3 src=$KEEPALIVED_DIR/keepalived.conf
    local env="/usr/bin/env SIPEDGE_ADMIN=http://$ADMIN SIPEDGE_BIN=$BIN SIPEDGE_VRRP_STATE=$WORK/vrrp_state_$4"
    local pat
    for pat in 'state MASTER' 'priority 150' '203\.0\.113\.5/24 dev eth0' \
        '"/etc/keepalived/sipedge-ready.sh"' '"/etc/keepalived/sipedge-notify.sh ' \
        "advert_int $ADVERT_INT_S\$" 'interface eth0'; do
        grep -Eq -- "$pat" "$src" || die "$src: no '$pat' to replace"
    done
    sed -e "s#state MASTER#state $state#" \
        -e "s#priority 150#priority $prio#" \
        -e "s#203\.0\.113\.5/24 dev eth0#$VIP/24 dev eth0#" \
        -e "s#\"/etc/keepalived/sipedge-ready.sh\"#\"$env $WORK/sipedge-ready.sh\"#" \
        -e "s#\"/etc/keepalived/sipedge-notify.sh #\"$env $WORK/sipedge-notify.sh #" \
        "$src" >"$out"
}
# keepalived's script security wants root-owned scripts in directories
# only root can write: copies in the (0755, root) work directory.
install -m 0755 "$KEEPALIVED_DIR/sipedge-ready.sh" "$KEEPALIVED_DIR/sipedge-notify.sh" "$WORK/"

admin() { # admin NS PATH -> body (curl inside the namespace)
    ip netns exec "$1" curl -s --max-time 1 "http://$ADMIN$2" 2>/dev/null || true
}
ready() { ip netns exec "$1" curl -sf --max-time 1 -o /dev/null "http://$ADMIN/health/ready"; }
probing() { ip netns exec "$1" "$BIN" ctl --admin "http://$ADMIN" ping-active 2>/dev/null || true; }
has_vip() { ip -n "$1" -4 -o addr show dev eth0 | grep -q " $VIP/"; }
now() { date +%s.%N; }
# wait_for SECONDS DESCRIPTION COMMAND...: poll every 50 ms
wait_for() {
    local secs=$1 what=$2 i; shift 2
    for ((i = 0; i < secs * 20; i++)); do
        "$@" && return 0
        sleep 0.05
    done
    die "timed out after ${secs}s waiting for $what"
}

START=$SECONDS
UAS_PIDS=()
LIMIT=$(( CALLS / RATE + PAUSE_MS / 1000 + 3 * RECV_TIMEOUT_MS / 1000 + 60 ))

for n in N1 N2; do
    ns=$NS_N1 ip=$NET.21
    [ $n = N2 ] && ns=$NS_N2 ip=$NET.22
    cp "$HERE/uas.xml" "$WORK/uas_$n.xml"
    start_in "$ns" "$WORK/uas_$n.out" "$LIMIT" sipp -sf "uas_$n.xml" \
        -i "$ip" -p "$NODE_PORT" -key node "$n" -nostdin -timeout "$(( LIMIT - 5 ))s" \
        -trace_err -error_file "uas_${n}_errors.log"
    UAS_PIDS+=("$LAST_PID")
done

for x in A B; do
    ns=$NS_A; [ $x = B ] && ns=$NS_B
    write_sipedge_conf "$WORK/sipedge_$x.toml"
    start_in "$ns" "$WORK/sipedge_$x.log" "$LIMIT" "$BIN" --config "$WORK/sipedge_$x.toml"
    eval "SIPEDGE_${x}_WRAP=$LAST_PID"
done
wait_for 15 "sipedge A's admin port" ready "$NS_A"
wait_for 15 "sipedge B's admin port" ready "$NS_B"
SIPEDGE_A=$(child_of "$SIPEDGE_A_WRAP")
[ -n "$SIPEDGE_A" ] || die "no sipedge process under $SIPEDGE_A_WRAP"

write_keepalived_conf "$WORK/keepalived_A.conf" MASTER 150 A
write_keepalived_conf "$WORK/keepalived_B.conf" BACKUP 100 B
for x in A B; do
    ns=$NS_A; [ $x = B ] && ns=$NS_B
    start_in "$ns" "$WORK/keepalived_$x.log" "$LIMIT" keepalived -n -l -D --vrrp \
        -f "$WORK/keepalived_$x.conf" -p "$WORK/keepalived_$x.pid" \
        -r "$WORK/vrrp_$x.pid" -c "$WORK/checkers_$x.pid"
done
# Settled: A holds the VIP and probes, B stands by with probing paused
# (its notify script ran) and still answers ready.
wait_for 20 "the VIP on A" has_vip "$NS_A"
b_paused() { [[ "$(probing "$NS_B")" == *off* ]]; }
a_probing() { [[ "$(probing "$NS_A")" == *on* ]]; }
wait_for 10 "B's notify_backup pausing its probing" b_paused
wait_for 10 "A probing" a_probing
has_vip "$NS_B" && die "both A and B hold the VIP"
ready "$NS_B" || die "B (probing paused) is not ready: $(admin "$NS_B" /health/ready)"
log "settled in $(( SECONDS - START ))s: A holds $VIP and probes; B stands by (probing off, ready)"

stat_value() {
    awk -F';' -v col="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        NF > 1 { v = $c }
        END { print (c && v != "") ? v + 0 : -1 }' "$1" 2>/dev/null || echo -1
}
# Counters from the final screen sipp prints when it stops:
#   screen_count FILE ok|failed|in:NAME
screen_count() {
    awk -v what="$2" '
        /Successful call/ && /\|/ { n = split($0, a, "|"); ok = a[n] + 0 }
        /Failed call/ && /\|/     { n = split($0, a, "|"); failed = a[n] + 0 }
        $1 ~ /^-+>$/ && $3 ~ /^[0-9]+$/ { inn[$2] = $3 }
        END {
            if (what == "ok") print ok + 0
            else if (what == "failed") print failed + 0
            else if (what ~ /^in:/) print inn[substr(what, 4)] + 0
        }' "$1" 2>/dev/null || echo 0
}
PROBLEMS=()

# ---- the load, and the kill -----------------------------------------------------
cp "$HERE/uac.xml" "$WORK/uac.xml"
UAC_LIMIT=$(( CALLS / RATE + PAUSE_MS / 1000 + 3 * RECV_TIMEOUT_MS / 1000 + 20 ))
log "trunk: $CALLS calls at $RATE cps to $VIP:$SIP_PORT, talk time ${PAUSE_MS} ms (limit ${UAC_LIMIT}s)"
( exec ip netns exec "$NS_T" timeout -k 5 "$UAC_LIMIT" sipp "$VIP:$SIP_PORT" \
    -sf uac.xml -i "$NET.31" -p 5060 \
    -r "$RATE" -rp 1000 -m "$CALLS" -l $(( RATE * 20 + 50 )) -d "$PAUSE_MS" \
    -recv_timeout "$RECV_TIMEOUT_MS" -max_non_invite_retrans 10 -max_invite_retrans 10 \
    -timeout "$(( UAC_LIMIT - 5 ))s" -timeout_error -nostdin \
    -trace_stat -stf stat.csv -fd 1 \
    -trace_logs -log_file calls.log \
    -trace_err -error_file uac_errors.log \
    >uac.out 2>&1 ) &
UAC=$!

dialogs_a() { admin "$NS_A" /metrics | awk '$1 == "sipedge_dialogs" { print int($2) }'; }
enough_dialogs() { local d; d=$(dialogs_a); [ -n "$d" ] && (( d >= KILL_AT_DIALOGS )); }
wait_for $(( CALLS / RATE )) "$KILL_AT_DIALOGS dialogs on A" enough_dialogs
DIALOGS_AT_KILL=$(dialogs_a)
# the VIP's arrival on B, time-stamped by the kernel's notification
start_in "$NS_B" "$WORK/b_addr_events.log" 40 ip -ts monitor address
MONITOR=$LAST_PID
sleep 0.2   # let the monitor subscribe (it prints nothing until an event)
T_KILL=$(now)
kill -KILL "$SIPEDGE_A"
{ wait "$SIPEDGE_A_WRAP"; } 2>/dev/null || true   # reaped quietly (no "Killed" line)
log "killed sipedge A (pid $SIPEDGE_A) holding $DIALOGS_AT_KILL dialogs"

T_MOVE=""
for ((i = 0; i < 600; i++)); do   # 30 s at 50 ms
    if has_vip "$NS_B"; then T_MOVE=$(now); break; fi
    sleep 0.05
done
[ -n "$T_MOVE" ] || die "the VIP did not move to B within 30 s"
# "[2026-12-06T10:08:27.363099] 2: eth0    inet 192.0.2.100/24 ..." (local time)
stamp=$(grep -v Deleted "$WORK/b_addr_events.log" 2>/dev/null | grep -F " $VIP/" | head -n 1 \
    | sed -n 's/^\[\([0-9-]*\)T\([0-9:.]*\)\].*/\1 \2/p')
if [ -n "$stamp" ]; then
    T_MOVE=$(date -d "$stamp" +%s.%N)
else
    log "no address event from B: the VIP move time is the poll's (50 ms resolution)"
fi
kill "$MONITOR" 2>/dev/null || true
VIP_MOVE_S=$(awk -v a="$T_KILL" -v b="$T_MOVE" 'BEGIN { printf "%.2f", b - a }')
log "VIP on B ${VIP_MOVE_S}s after the kill"

# Gratuitous ARP: the trunk's and the nodes' entries for the VIP must name
# B's MAC without waiting for their own re-resolution (that takes >= 5 s).
arp_is_b() { ip -n "$1" neigh show "$VIP" | grep -qi "lladdr $MAC_B"; }
ARP_PROBLEMS=()
for ns in "$NS_T" "$NS_N1" "$NS_N2"; do
    ok=0
    for ((i = 0; i < 40; i++)); do arp_is_b "$ns" && { ok=1; break; }; sleep 0.05; done
    (( ok )) || ARP_PROBLEMS+=("${ns#"$RUN"-} ARP for $VIP: $(ip -n "$ns" neigh show "$VIP" | tr '\n' ' ')")
done
# notify_master resumes B's probing
for ((i = 0; i < 100; i++)); do
    B_PROBING=$(probing "$NS_B")
    [[ "$B_PROBING" == *on* ]] && break
    sleep 0.05
done
has_vip "$NS_A" && PROBLEMS+=("A still holds the VIP after the move")

wait "$UAC" && UAC_RC=0 || UAC_RC=$?
log "trunk done (sipp exit $UAC_RC) in $(( SECONDS - START ))s"

# ---- failback: A's sipedge restarted (as systemd would) ----------------------------
# A is the standby now: its track script pauses the restarted sipedge's
# probing (which starts on), A turns ready, and with its higher priority
# takes the VIP back. A short load then runs through A.
start_in "$NS_A" "$WORK/sipedge_A2.log" "$LIMIT" "$BIN" --config "$WORK/sipedge_A.toml"
T_RESTART=$(now)
a_has_vip() { has_vip "$NS_A"; }
wait_for 30 "the VIP back on A after its sipedge restarted" a_has_vip
T_BACK=$(now)
FAILBACK_S=$(awk -v a="$T_RESTART" -v b="$T_BACK" 'BEGIN { printf "%.1f", b - a }')
sed 's/\x1b\[[0-9;]*m//g' "$WORK/sipedge_A2.log" | grep -q 'dispatcher.ping_active old=true new=false' \
    || PROBLEMS+=("the restarted sipedge on the standby A was not paused by its track script")
wait_for 10 "B's notify_backup after the failback" b_paused
wait_for 10 "A probing after the failback" a_probing
has_vip "$NS_B" && PROBLEMS+=("B still holds the VIP after the failback")
log "VIP back on A ${FAILBACK_S}s after its sipedge restarted; a short load through A"
BACK_CALLS=$(( RATE * 2 ))
ip netns exec "$NS_T" timeout -k 5 60 sipp "$VIP:$SIP_PORT" \
    -sf uac.xml -i "$NET.31" -p 5060 -r "$RATE" -m "$BACK_CALLS" -d 500 \
    -recv_timeout 5000 -timeout 50s -timeout_error -nostdin \
    -trace_stat -stf stat_back.csv -fd 1 >uac_back.out 2>&1 && BACK_RC=0 || BACK_RC=$?
BACK_OK=$(stat_value "$WORK/stat_back.csv" 'SuccessfulCall(C)')
(( BACK_RC == 0 && BACK_OK == BACK_CALLS )) \
    || PROBLEMS+=("after the failback: $BACK_OK of $BACK_CALLS calls succeeded (sipp exit $BACK_RC)")
FAILBACK_FIGURES=" failback_s=$FAILBACK_S calls_after_failback=$BACK_OK/$BACK_CALLS"

# SIGTERM makes each node print its final counters
for p in "${UAS_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${UAS_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done

# ---- the figures -----------------------------------------------------------------
# A node's calls: its sipp "calls" minus the OPTIONS probes (one each)
NODE_CALLS=0 NODE_FAILED=0
for n in N1 N2; do
    NODE_CALLS=$(( NODE_CALLS + $(screen_count "$WORK/uas_$n.out" ok) - $(screen_count "$WORK/uas_$n.out" in:OPTIONS) ))
    NODE_FAILED=$(( NODE_FAILED + $(screen_count "$WORK/uas_$n.out" failed) ))
done
OK_CALLS=$(stat_value "$WORK/stat.csv" 'SuccessfulCall(C)')
FAILED_CALLS=$(stat_value "$WORK/stat.csv" 'FailedCall(C)')

# Per call (calls.log, wall clock), among the calls not finished before
# the kill: established = 2xx to the INVITE before the kill; in setup =
# INVITE sent before the kill, 2xx after (or never); new = INVITE sent
# after the kill. A call in setup at the very instant of the kill (a few
# ms at most: the dead proxy had forwarded the INVITE, the 2xx had not
# reached the trunk) depends on a race between the trunk's INVITE
# retransmission and the node's 2xx retransmission at the backup; the
# INVITE reaches it as a new one and may go to the other node. Counted
# and printed, not failed on.
read -r DONE_BEFORE EST EST_OK EST_LOST NEW NEW_OK NEW_LOST UNLOGGED FIRST_NEW_S FIRST_NEW_AFTER_MOVE_S \
    NEW_SLOWEST_S STICKY_BAD IN_SETUP NEW_DELAYED SETUP_LOST < <(awk -v kill="$T_KILL" -v move="$T_MOVE" -v failed="$FAILED_CALLS" '
    function t(k,   v) { v = f[k]; if (v == "" || v == "/") return -1; split(v, a, "/"); return a[1] + a[2] / 1e6 }
    /^(OK|FAIL) / {
        delete f
        for (i = 2; i <= NF; i++) { p = index($i, "="); f[substr($i, 1, p - 1)] = substr($i, p + 1) }
        ok = ($1 == "OK"); logged++
        t0 = t("t0"); t1 = t("t1"); t5 = t("t5")
        if (ok && t5 < kill) { before++; next }
        if (ok && (f["n1"] != f["n2"] || f["n1"] != f["n3"])) sticky++
        if (t1 >= 0 && t1 < kill) { est++; if (ok) est_ok++; else est_lost++; next }
        if (t0 < kill) { in_setup++; if (!ok) setup_lost++; else setup_ok++; next }
        new++
        if (!ok) { new_lost++; next }
        new_ok++
        if (t0 >= kill && (first < 0 || t1 < first)) first = t1
        if (t1 - t0 > slowest) slowest = t1 - t0
        if (t1 - t0 > 1) delayed++
    }
    BEGIN { first = -1; slowest = 0 }
    END {
        unlogged = failed - (logged - before - est_ok - new_ok - setup_ok)
        printf "%d %d %d %d %d %d %d %d %s %s %.2f %d %d %d %d\n", before, est, est_ok, est_lost, new, new_ok, new_lost,
            unlogged < 0 ? 0 : unlogged,
            first < 0 ? "-" : sprintf("%.2f", first - kill),
            first < 0 ? "-" : sprintf("%.2f", first - move), slowest, sticky, in_setup, delayed, setup_lost
    }' "$WORK/calls.log")

FIGURES="calls=$CALLS ok=$OK_CALLS failed=$FAILED_CALLS done_before_kill=$DONE_BEFORE"
FIGURES+=" established=$EST established_lost=$EST_LOST new=$NEW new_lost=$NEW_LOST unlogged_failures=$UNLOGGED"
FIGURES+=" dialogs_on_A_at_kill=$DIALOGS_AT_KILL vip_move_s=$VIP_MOVE_S first_new_call_s=$FIRST_NEW_S"
FIGURES+=" first_new_call_after_move_s=$FIRST_NEW_AFTER_MOVE_S in_setup_at_kill=$IN_SETUP in_setup_lost=$SETUP_LOST"
FIGURES+=" new_delayed_over_1s=$NEW_DELAYED slowest_new_setup_s=$NEW_SLOWEST_S"
FIGURES+=" node_calls=$NODE_CALLS extra_legs=$(( NODE_CALLS + NODE_FAILED - CALLS - BACK_CALLS )) node_failed=$NODE_FAILED$FAILBACK_FIGURES"

PROBLEMS+=("${ARP_PROBLEMS[@]}")
(( OK_CALLS >= 0 )) || PROBLEMS+=("no sipp statistics")
(( EST > 0 )) || PROBLEMS+=("no call was established across the kill")
(( EST_LOST == 0 )) || PROBLEMS+=("$EST_LOST established calls lost")
(( NEW_LOST <= MAX_NEW_LOST )) || PROBLEMS+=("$NEW_LOST new calls lost (max $MAX_NEW_LOST)")
(( UNLOGGED == 0 )) || PROBLEMS+=("$UNLOGGED calls failed without a log line")
(( STICKY_BAD == 0 )) || PROBLEMS+=("$STICKY_BAD calls had re-INVITE/BYE on another node")
# Every INVITE reached one node once, and no node was left with a half
# call (missing ACK, re-INVITE or BYE); except for a call in setup at the
# kill (see above), whose INVITE retransmission may reach a node a second
# time through B, or whose ACK died with A (the trunk's ACK to the 2xx
# that A relayed an instant before the kill; the node then sees the
# re-INVITE before any ACK and fails its leg). A leg is a call a node
# finished, well or not.
LEGS=$(( NODE_CALLS + NODE_FAILED ))
EXTRA_LEGS=$(( LEGS - CALLS - BACK_CALLS ))
(( EXTRA_LEGS >= 0 && EXTRA_LEGS <= IN_SETUP )) \
    || PROBLEMS+=("the nodes saw $LEGS calls ($NODE_FAILED failed), want $(( CALLS + BACK_CALLS )) (+ at most $IN_SETUP in setup at the kill)")
(( NODE_FAILED <= IN_SETUP )) || PROBLEMS+=("$NODE_FAILED calls failed on the nodes")
(( OK_CALLS + FAILED_CALLS == CALLS )) || PROBLEMS+=("sipp finished $(( OK_CALLS + FAILED_CALLS )) of $CALLS calls")
if [ "$FIRST_NEW_AFTER_MOVE_S" = - ]; then
    PROBLEMS+=("no new call succeeded after the kill")
elif ! awk -v d="$FIRST_NEW_AFTER_MOVE_S" -v a="$ADVERT_INT_S" 'BEGIN { exit !(d <= a) }'; then
    PROBLEMS+=("first new call ${FIRST_NEW_AFTER_MOVE_S}s after the move (want <= advert_int ${ADVERT_INT_S}s)")
fi
[[ "$B_PROBING" == *on* ]] || PROBLEMS+=("B's probing after the move: '$B_PROBING' (notify_master should resume it)")

log "done in $(( SECONDS - START ))s"
if (( ${#PROBLEMS[@]} == 0 )); then
    echo "PASS ha: $FIGURES"
    exit 0
fi
echo "FAIL ha: $(IFS=';'; echo "${PROBLEMS[*]}") -- $FIGURES"
for f in uac_errors.log keepalived_A.log keepalived_B.log sipedge_B.log; do
    [ -s "$WORK/$f" ] && { echo "----- $f (last lines)"; tail -n 15 "$WORK/$f"; }
done
grep '^FAIL ' "$WORK/calls.log" | head -n 10 || true
exit 1
