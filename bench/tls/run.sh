#!/usr/bin/env bash
# bench/tls/run.sh - sipedge against Kamailio's tls module, side by side:
# the two proxies alternate in every round (K S K S ...), same certificate,
# same client, same call flow. A benchmark, not a test. Loopback only.
#
#   idle        memory per idle TLS connection: N connections (handshake
#               done, answered a CRLF ping, then idle); the proxy's summed
#               PSS and RSS (every Kamailio process; sipedge's one) before
#               and after, per connection; the same over plain TCP as the
#               baseline (what a connection costs without TLS)
#   handshakes  full handshakes per second and the proxy's CPU (utime+stime
#               from /proc) per handshake, TLS 1.3 then TLS 1.2; a new
#               connection each, no resumption, C in flight
#   calls       CPU per call with a TLS trunk (sipbench's call flow):
#               sipp UAC 5270 --udp--> trunk Kamailio 127.0.0.1:5260 --TLS-->
#               proxy under test 127.0.0.1:5261 --udp 5262--> sipp UAS
#               127.0.0.1:5281 / 5282; only the proxy under test's CPU counts
#
# Ports 5260-5282 on 127.0.0.1, not sipbench's 5060-5082, so a sipbench run
# or a test on 5060 elsewhere on the machine cannot collide with this one.
#
# Usage:
#   bench/tls/run.sh [--rounds N] [--only idle|handshakes|calls]...
#                    [--conns N] [--handshakes N] [--concurrency C]
#                    [--calls N] [--rate CPS] [--trunk tls|tcp] [--wait-idle S]
#
#   --rounds N       rounds, each runs Kamailio then sipedge (default 3, 1-10)
#   --only PART      run only this part (repeatable; default all three)
#   --conns N        idle connections (default 1000, <= 5000)
#   --handshakes N   handshakes per version and proxy (default 2000, <= 50000)
#   --concurrency C  handshakes in flight (default 4)
#   --calls N        calls per call run (default 3000, <= 50000)
#   --rate CPS       call rate (default 300, <= 2000)
#   --trunk tcp      the calls part with the trunk hop over plain TCP instead
#                    (the control: what TLS adds per call, same session)
#   --wait-idle S    before each call run, wait up to S s for a quiet host
#
# Needs: kamailio + kamailio-tls-modules, sip-tester (sipp), openssl, python3,
# ../shared/sipbench (SIPBENCH_DIR=... elsewhere; its lib.sh, sbtool.py and
# scenarios are used). Builds target/release/sipedge and the TLS client
# (bench/tls/driver) in release mode. Results: target/tls-bench/<time>/
# (results.txt: every result line, then the side-by-side summary).
# Every process is started here and stopped by pid; every load is bounded.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SIPBENCH_DIR=${SIPBENCH_DIR:-$REPO/../shared/sipbench}
[ -f "$SIPBENCH_DIR/lib.sh" ] || { echo "no sipbench at $SIPBENCH_DIR (set SIPBENCH_DIR)" >&2; exit 2; }
# shellcheck source=/dev/null
. "$SIPBENCH_DIR/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//; /^set -euo/d'; exit "${1:-0}"; }

ROUNDS=3 PARTS=() CONNS=1000 HANDSHAKES=2000 CONC=4 CALLS=3000 RATE=300 TRUNK=tls
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --only) PARTS+=("$2"); shift 2 ;;
        --conns) CONNS=$2; shift 2 ;;
        --handshakes) HANDSHAKES=$2; shift 2 ;;
        --concurrency) CONC=$2; shift 2 ;;
        --calls) CALLS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --trunk) TRUNK=$2; shift 2 ;;
        --wait-idle) SB_WAIT_IDLE_S=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage 2 ;;
    esac
done
[ ${#PARTS[@]} -gt 0 ] || PARTS=(idle handshakes calls)
in_range() { [[ "$1" =~ ^[0-9]+$ ]] && (( $1 >= $2 && $1 <= $3 )); }
in_range "$ROUNDS" 1 10 && in_range "$CONNS" 1 5000 && in_range "$HANDSHAKES" 1 50000 \
    && in_range "$CONC" 1 64 && in_range "$CALLS" 100 50000 && in_range "$RATE" 1 2000 \
    || { echo "option out of range (see --help)" >&2; exit 2; }
for p in "${PARTS[@]}"; do
    case "$p" in idle|handshakes|calls) ;; *) echo "unknown part $p" >&2; exit 2 ;; esac
done
case "$TRUNK" in tls|tcp) ;; *) echo "--trunk tls or tcp" >&2; exit 2 ;; esac
want() { local p; for p in "${PARTS[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }

# ---- ports (loopback only) ---------------------------------------------------
# lib.sh's names, moved: the UAC sends to PROXY_PORT, here the trunk.
PROXY_PORT=5260      # the trunk Kamailio, UDP from the UAC
UAC_PORT=5270
UAS_A_PORT=5281
UAS_B_PORT=5282
PUT_TLS_PORT=5261    # the proxy under test: TLS from the trunk / the client
PUT_UDP_PORT=5262    # the proxy under test: UDP to and from the nodes
TRUNK_TLS_PORT=5263  # the trunk Kamailio's TLS socket (it connects out from it)
PUT_TCP_PORT=5264    # the proxy under test: plain TCP (idle baseline, --trunk tcp)
TRUNK_TCP_PORT=5265  # the trunk Kamailio's TCP socket (--trunk tcp)

OUT=${TLS_BENCH_OUT:-$REPO/target/tls-bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RESULTS="$OUT/results.txt"
trap 'sb_cleanup' EXIT
trap 'exit 130' INT TERM

# ---- builds ------------------------------------------------------------------
export CARGO_INCREMENTAL=0
sb_log "building sipedge and the TLS client (release)"
(cd "$REPO" && cargo build --release --quiet --bin sipedge)
cargo build --release --quiet --manifest-path "$HERE/driver/Cargo.toml"
SIPEDGE="$REPO/target/release/sipedge"
DRIVER="$HERE/driver/target/release/tls_bench"

# ---- certificates: ECDSA P-256, a CA and a leaf for IP 127.0.0.1 ---------------
C="$OUT/certs"
mkdir -p "$C"
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$C/ca.key" -out "$C/ca.pem" -days 30 -subj /CN=sipedge-bench-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$C/key.pem" -out "$C/leaf.csr" -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' >"$C/leaf.ext"
openssl x509 -req -in "$C/leaf.csr" -CA "$C/ca.pem" -CAkey "$C/ca.key" -CAcreateserial \
    -days 30 -out "$C/cert.pem" -extfile "$C/leaf.ext" 2>/dev/null

# ---- configs -------------------------------------------------------------------
# Kamailio under test: sipbench's kamailio.cfg (same routing, dispatcher,
# children=2, tcp_children=1), its TCP listener replaced by TLS and its UDP
# socket moved to PUT_UDP_PORT; connection limits raised for the bench.
cat >"$OUT/kamailio-tls.cfg" <<EOF
[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
certificate = $C/cert.pem
private_key = $C/key.pem

[client:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
EOF
sed -e "s|^listen=udp:127.0.0.1:5060|listen=udp:127.0.0.1:$PUT_UDP_PORT|" \
    -e "s|^listen=tcp:127.0.0.1:5060|listen=tls:127.0.0.1:$PUT_TLS_PORT\nlisten=tcp:127.0.0.1:$PUT_TCP_PORT\nenable_tls=yes\ntcp_max_connections=8192\ntls_max_connections=8192\ntcp_connection_lifetime=3600|" \
    -e "s|^loadmodule \"tm.so\"|loadmodule \"tls.so\"\nmodparam(\"tls\", \"config\", \"$OUT/kamailio-tls.cfg\")\nloadmodule \"tm.so\"|" \
    "$SIPBENCH_DIR/kamailio.cfg" >"$OUT/kamailio-put.cfg"
grep -q "^listen=tls:" "$OUT/kamailio-put.cfg" && grep -q '"tls.so"' "$OUT/kamailio-put.cfg" \
    || sb_die "could not derive the Kamailio config from $SIPBENCH_DIR/kamailio.cfg"

printf '1 sip:127.0.0.1:%s 0 0 duid=A\n1 sip:127.0.0.1:%s 0 0 duid=B\n' \
    "$UAS_A_PORT" "$UAS_B_PORT" >"$OUT/dispatcher.list"

# sipedge under test: the same nodes, probing and listeners; the connection
# caps raised for the bench (defaults: max_connections 4096,
# max_connections_per_source 32).
cat >"$OUT/sipedge.toml" <<EOF
[listen]
udp = ["127.0.0.1:$PUT_UDP_PORT"]
tls = ["127.0.0.1:$PUT_TLS_PORT"]
tcp = ["127.0.0.1:$PUT_TCP_PORT"]
advertise = "127.0.0.1"

[dispatcher]
algorithm = "round-robin"
[[dispatcher.destination]]
uri = "sip:127.0.0.1:$UAS_A_PORT"
[[dispatcher.destination]]
uri = "sip:127.0.0.1:$UAS_B_PORT"

[failover]
fr_timeout = "2s"

[probe]
interval = "2s"
mode = 1

[tcp]
max_connections = 8192
max_connections_per_source = 8192
idle_timeout = "3600s"

[tls]
certificate = "$C/cert.pem"
key = "$C/key.pem"
EOF
"$SIPEDGE" check-config "$OUT/sipedge.toml" >/dev/null || sb_die "sipedge refuses $OUT/sipedge.toml"

if [ "$TRUNK" = tls ]; then
    TRUNK_DU="sip:127.0.0.1:$PUT_TLS_PORT;transport=tls"
else
    TRUNK_DU="sip:127.0.0.1:$PUT_TCP_PORT;transport=tcp"
fi
# The trunk: UDP in from the UAC, TLS out to the proxy under test,
# record-routing (both sides: rr's double Record-Route), loose routing back.
cat >"$OUT/kamailio-trunk.cfg" <<EOF
#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children=2
tcp_children=2
auto_aliases=no
listen=udp:127.0.0.1:$PROXY_PORT
listen=tls:127.0.0.1:$TRUNK_TLS_PORT
listen=tcp:127.0.0.1:$TRUNK_TCP_PORT
enable_tls=yes
tcp_connection_lifetime=3600
sip_warning=no
loadmodule "tls.so"
modparam("tls", "config", "$OUT/kamailio-tls.cfg")
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "textops.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
modparam("tm", "fr_timer", 4000)
modparam("rr", "enable_full_lr", 1)
modparam("rr", "append_fromtag", 0)
request_route {
	if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
	if (is_method("CANCEL")) { if (t_check_trans()) { t_relay(); } exit; }
	if (!is_method("ACK")) {
		if (t_precheck_trans()) { t_check_trans(); exit; }
		t_check_trans();
	}
	if (has_totag()) {
		if (loose_route()) { t_relay(); exit; }
		if (is_method("ACK") && t_check_trans()) { t_relay(); }
		exit;
	}
	remove_hf("Route");
	if (is_method("INVITE")) { record_route(); }
	\$du = "$TRUNK_DU";
	if (!t_relay()) { sl_reply_error(); }
	exit;
}
EOF

# ---- processes -----------------------------------------------------------------
# Our ports must be free; a process of an earlier step (or another user of
# sipbench's ports) may take a few seconds to go: wait up to 30 s.
check_free() {
    local p busy i
    for ((i = 0; i < 30; i++)); do
        busy=""
        for p in $PROXY_PORT $PUT_TLS_PORT $PUT_UDP_PORT $TRUNK_TLS_PORT $PUT_TCP_PORT $TRUNK_TCP_PORT \
            $UAC_PORT $UAS_A_PORT $UAS_B_PORT; do
            ss -Hlun "sport = :$p" | grep -q . && busy+=" udp:$p"
            ss -Hltn "sport = :$p" | grep -q . && busy+=" tcp:$p"
        done
        [ -z "$busy" ] && return 0
        sleep 1
    done
    sb_die "ports in use:$busy"
}
wait_tcp_listen() {   # PORT PID
    local i
    for ((i = 0; i < 200; i++)); do
        ss -Hltn "sport = :$1" | grep -q . && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# start_put KIND DIR: the proxy under test; sets PUT_PID and PUT_PIDS
# (every process of it, comma-separated).
start_put() {
    local kind=$1 dir=$2
    mkdir -p "$dir"
    case "$kind" in
        kamailio)
            mkdir -p "$dir/kamailio-run"
            kamailio -DD -E -m "$KAM_SHM_MB" -M "$KAM_PKG_MB" -x tlsf -X tlsf -Y "$dir/kamailio-run" \
                -f "$OUT/kamailio-put.cfg" -A "DS_LIST=\"$OUT/dispatcher.list\"" \
                >"$dir/put.log" 2>&1 &
            ;;
        sipedge)
            RUST_LOG=warn "$SIPEDGE" --config "$OUT/sipedge.toml" >"$dir/put.log" 2>&1 &
            ;;
    esac
    PUT_PID=$!
    SB_PIDS+=("$PUT_PID")
    wait_tcp_listen "$PUT_TLS_PORT" "$PUT_PID" || sb_die "$kind did not listen on tls:$PUT_TLS_PORT (see $dir/put.log)"
    sleep "$SB_WARMUP_S"
    kill -0 "$PUT_PID" 2>/dev/null || sb_die "$kind exited during warm-up (see $dir/put.log)"
    PUT_PIDS=$( { echo "$PUT_PID"; sb_descendants "$PUT_PID"; } | paste -sd, -)
}
stop_all() { sb_cleanup; }

start_trunk() {
    local dir=$1
    mkdir -p "$dir/trunk-run"
    kamailio -DD -E -m 1024 -M 16 -x tlsf -X tlsf -Y "$dir/trunk-run" \
        -f "$OUT/kamailio-trunk.cfg" >"$dir/trunk.log" 2>&1 &
    TRUNK_PID=$!
    SB_PIDS+=("$TRUNK_PID")
    sb_wait_udp_listen "$PROXY_PORT" "$TRUNK_PID" 20 || sb_die "trunk Kamailio did not start (see $dir/trunk.log)"
    # a port taken by someone else between check_free and here: Kamailio
    # logs the bind error and exits
    sleep 1
    kill -0 "$TRUNK_PID" 2>/dev/null || sb_die "trunk Kamailio exited (see $dir/trunk.log)"
}

record() { tee -a "$RESULTS"; }

{
    echo "# bench/tls/run.sh $(date -Is) commit $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- src || echo '+dirty')"
    echo "# $(kamailio -v | head -1); $(openssl version); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# rounds=$ROUNDS conns=$CONNS handshakes=$HANDSHAKES concurrency=$CONC calls=$CALLS rate=$RATE trunk=$TRUNK"
} | record

for ((round = 1; round <= ROUNDS; round++)); do
    for kind in kamailio sipedge; do
        dir="$OUT/r$round-$kind"
        if want idle || want handshakes; then
            check_free
            start_put "$kind" "$dir"
            sb_log "round $round/$ROUNDS: $kind (pids $PUT_PIDS)"
            if want idle; then
                "$DRIVER" idle "127.0.0.1:$PUT_TLS_PORT" "$C/ca.pem" --count "$CONNS" \
                    --concurrency "$CONC" --pids "$PUT_PIDS" --max-seconds 120 \
                    --label "$kind" | sed "s/^/round=$round /" | record
                sleep 2   # the proxy closes the 1000 connections
            fi
            if want handshakes; then
                for v in 1.3 1.2; do
                    "$DRIVER" handshakes "127.0.0.1:$PUT_TLS_PORT" "$C/ca.pem" --count "$HANDSHAKES" \
                        --concurrency "$CONC" --pids "$PUT_PIDS" --max-seconds 120 \
                        --label "$kind" $([ $v = 1.2 ] && echo --tls12) \
                        | sed "s/^/round=$round /" | record
                done
            fi
            stop_all
        fi
        if want idle; then
            # the plain TCP baseline in a fresh process: one that has just
            # freed 1000 TLS connections would reuse their memory
            check_free
            start_put "$kind" "$dir/tcp"
            "$DRIVER" idle "127.0.0.1:$PUT_TCP_PORT" "$C/ca.pem" --count "$CONNS" --plain \
                --concurrency "$CONC" --pids "$PUT_PIDS" --max-seconds 120 \
                --label "$kind" | sed "s/^/round=$round /" | record
            stop_all
        fi
        if want calls; then
            check_free
            cdir="$dir/calls"
            mkdir -p "$cdir"
            cp "$SB_SCEN/uac.xml" "$cdir/uac.xml"
            sb_meta "$cdir/meta.json" proxy_label="$kind" proxy_kind="$kind" mode="$TRUNK-trunk" \
                rate="$RATE" calls="$CALLS" pause_ms="$SB_PAUSE_MS" max_fail_pct="$SB_MAX_FAIL_PCT" \
                max_setup_p99_ms=0 proxy_port="$PUT_UDP_PORT" uac_port="$UAC_PORT" \
                uas_a_port="$UAS_A_PORT" uas_b_port="$UAS_B_PORT"
            sb_wait_idle
            sb_meta "$cdir/meta.json" pre_busy_pct="$SB_PRE_BUSY_PCT" pre_steal_pct="$SB_PRE_STEAL_PCT"
            sb_start_uas A "$UAS_A_PORT" "$SB_SCEN/uas.xml" "$cdir"
            sb_start_uas B "$UAS_B_PORT" "$SB_SCEN/uas.xml" "$cdir"
            start_put "$kind" "$cdir"
            start_trunk "$cdir"
            sleep 1
            hard=$(sb_hard_timeout "$RATE" "$CALLS" "$SB_PAUSE_MS")
            sb_uac_args "$RATE" "$CALLS" "$SB_PAUSE_MS" "$hard"
            sb_log "round $round/$ROUNDS: $kind behind the $TRUNK trunk, $CALLS calls at $RATE cps -> $cdir"
            sb_tool udpwatch "$cdir/udpwatch.json" "$((hard + 10))" "$PUT_UDP_PORT" "$UAC_PORT" "$UAS_A_PORT" "$UAS_B_PORT" &
            UDPWATCH_PID=$!
            SB_PIDS+=("$UDPWATCH_PID")
            sb_tool snap "$cdir/cpu_before.json" "proxy=$PUT_PID" "uas=${UAS_PID[A]},${UAS_PID[B]}" "trunk=$TRUNK_PID"
            rc=0
            ( cd "$cdir" && exec "$SB_PY" "$SB_DIR/sbtool.py" rusage uac_rusage.json -- \
                timeout -k 5 "$hard" "${UAC_ARGS[@]}" >"$cdir/uac.out" 2>&1 ) &
            UAC_PID=$!
            SB_PIDS+=("$UAC_PID")
            wait "$UAC_PID" || rc=$?
            sb_tool snap "$cdir/cpu_after.json" "proxy=$PUT_PID" "uas=${UAS_PID[A]},${UAS_PID[B]}" "trunk=$TRUNK_PID"
            kill -0 "$PUT_PID" 2>/dev/null || sb_log "WARNING: $kind died during the run"
            stop_all
            [ "$rc" -eq 0 ] || sb_log "UAC exit status $rc"
            line=$(sb_tool summarize "$cdir")
            trunk_s=$("$SB_PY" - "$cdir" <<'PY'
import json, sys
d = sys.argv[1]
b, a = (json.load(open(f"{d}/cpu_{w}.json")) for w in ("before", "after"))
print("%.2f" % ((a["groups"]["trunk"]["ticks"] - b["groups"]["trunk"]["ticks"]) / a["clk_tck"]))
PY
)
            echo "round=$round $line trunk_cpu_s=$trunk_s" | record
        fi
    done
done

# ---- side by side ------------------------------------------------------------------
"$SB_PY" - "$RESULTS" <<'PY' | record
import re, statistics, sys
rows = []
for l in open(sys.argv[1]):
    if l.startswith("#"):
        continue
    d = dict(kv.split("=", 1) for kv in l.split() if "=" in kv)
    if d:
        rows.append(d)

def f(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None

def side(title, sel, key, label_key, fmt="%.0f", ratio=True):
    ks = [r for r in rows if sel(r) and r.get(label_key) == "kamailio"]
    ss = [r for r in rows if sel(r) and r.get(label_key) == "sipedge"]
    if not ks or not ss:
        return
    print(f"# {title}: {key}")
    ratios = []
    for k in ks:
        s = next((s for s in ss if s["round"] == k["round"]), None)
        kv, sv = f(k.get(key)), f(s.get(key)) if s else None
        r = sv / kv if ratio and kv and sv is not None else None
        if r is not None:
            ratios.append(r)
        print(f"#   round {k['round']}: kamailio {fmt % kv if kv is not None else '?'}"
              f"  sipedge {fmt % sv if sv is not None else '?'}"
              f"  ratio {'%.2f' % r if r is not None else '?'}")
    km = statistics.mean(f(k[key]) for k in ks if f(k.get(key)) is not None)
    sm = statistics.mean(f(s[key]) for s in ss if f(s.get(key)) is not None)
    if ratio and km and ratios:
        print(f"#   mean: kamailio {fmt % km}  sipedge {fmt % sm}  ratio of means {sm / km:.2f}"
              f"  (rounds {min(ratios):.2f}-{max(ratios):.2f})")
    else:
        print(f"#   mean: kamailio {fmt % km}  sipedge {fmt % sm}")

print("# ---- side by side (sipedge / kamailio)")
for v, what in (("1.3", "TLS"), ("tcp", "plain TCP (baseline)")):
    idle = lambda r, v=v: r.get("mode") == "idle" and r.get("version") == v
    side(f"idle {what} connections, PSS bytes per connection", idle, "pss_bytes_per_conn", "label")
    side(f"idle {what} connections, RSS bytes per connection", idle, "rss_bytes_per_conn", "label")
for v in ("1.3", "1.2"):
    hs = lambda r, v=v: r.get("mode") == "handshakes" and r.get("version") == v
    side(f"TLS {v} handshakes per second", hs, "hs_per_s", "label")
    side(f"TLS {v} proxy CPU us per handshake", hs, "proxy_us_per_hs", "label")
for t in ("tls", "tcp"):
    calls = lambda r, t=t: r.get("mode") == f"{t}-trunk"
    T = t.upper()
    side(f"{T} trunk, proxy CPU us per call", calls, "proxy_us_per_call", "proxy")
    side(f"{T} trunk, failed calls", calls, "failed", "proxy", ratio=False)
    side(f"{T} trunk, achieved calls/s", calls, "achieved_cps", "proxy", "%.1f")
    side(f"{T} trunk, steal % during the run", calls, "steal_pct", "proxy", "%.1f", ratio=False)
    side(f"{T} trunk, other processes (% of a core) during the run", calls, "others_core_pct",
         "proxy", "%.0f", ratio=False)
PY
sb_log "results: $RESULTS"
