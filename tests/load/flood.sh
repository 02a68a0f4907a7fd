#!/usr/bin/env bash
# tests/load/flood.sh - legitimate calls through sipedge while it is flooded.
#
# Usage: tests/load/flood.sh [SIPEDGE_BINARY] [FLOOD_BINARY]
#        (defaults: target/release/sipedge and target/release/examples/flood;
#        build them with `cargo build --release --bin sipedge --example flood`)
#
# Loopback only. The trunk (sipp UAC, 127.0.0.1) is the only trusted source;
# two sipp UAS are the FreeSWITCH nodes. While $CALLS calls run at $RATE cps,
# examples/flood sends $FLOOD_RATE messages/s for $FLOOD_S s from
# 127.0.0.2-33: a third garbage, a third scanner OPTIONS, a third INVITEs
# from untrusted sources. Then a recovery run of 200 calls must all succeed.
# Reports: calls failed during the flood, calls already established that
# failed, sipedge's peak RSS, the recovery result. Every process is bounded
# by `timeout` and stopped on exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$HERE/../..
BIN=${1:-$ROOT/target/release/sipedge}
FLOOD=${2:-$ROOT/target/release/examples/flood}
CALLS=${FLOOD_CALLS:-2000}
RATE=${FLOOD_CALL_RATE:-100}
FLOOD_RATE=${FLOOD_RATE:-30000}
FLOOD_S=${FLOOD_SECONDS:-10}
IP=127.0.0.1
[ -x "$BIN" ] && [ -x "$FLOOD" ] || { echo "build first: cargo build --release --bin sipedge --example flood" >&2; exit 2; }
command -v sipp >/dev/null || { echo "sipp is needed (apt-get install sip-tester)" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sipedge-flood.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
cd "$WORK"
cp "$ROOT/tests/sipp/uac.xml" "$ROOT/tests/sipp/uas.xml" .

base=$(( 20000 + RANDOM % 15000 ))
P_PROXY=$base P_UAC=$((base + 1)) P_A=$((base + 2)) P_B=$((base + 3))
for n in A B; do
    p=$P_A; [ $n = B ] && p=$P_B
    timeout 300 sipp -sf uas.xml -i $IP -p "$p" -key node $n -nostdin -timeout 290s \
        -buff_size 4194304 >"uas_$n.out" 2>&1 &
    PIDS+=($!)
done
cat >sipedge.toml <<EOF
[listen]
udp = ["$IP:$P_PROXY"]
advertise = "$IP:$P_PROXY"
[dispatcher]
algorithm = "round-robin"
[[dispatcher.destination]]
uri = "sip:$IP:$P_A"
[[dispatcher.destination]]
uri = "sip:$IP:$P_B"
[security]
trusted = ["127.0.0.1/32"]
silent_drop = true
rate_limit = { requests = 20, per = "1s", block_for = "10s" }
EOF
RUST_LOG=warn timeout 300 "$BIN" --config sipedge.toml >proxy.out 2>proxy.err &
PROXY=$!
PIDS+=($PROXY)
sleep 2
PID=$(pgrep -P $PROXY sipedge || echo $PROXY)
rss_kb() { awk '/^VmRSS/ {print $2}' /proc/"$PID"/status 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM/ {print $2}' /proc/"$PID"/status 2>/dev/null || echo 0; }
RSS_BEFORE=$(rss_kb)

# Legitimate calls, then the flood in the middle of them.
timeout 200 sipp $IP:$P_PROXY -sf uac.xml -i $IP -p $P_UAC -r "$RATE" -m "$CALLS" -d 500 \
    -recv_timeout 8000 -buff_size 4194304 -nostdin -timeout 180s \
    -trace_stat -stf stat.csv -fd 1 -trace_logs -log_file calls.log >uac.out 2>&1 &
UAC=$!
PIDS+=($UAC)
sleep 3
"$FLOOD" $IP:$P_PROXY "$FLOOD_RATE" "$FLOOD_S" | tee flood.out
RSS_FLOOD=$(rss_kb)
wait $UAC || true
ok=$(grep -c '^OK ' calls.log || true)
fail=$(grep -c '^FAIL ' calls.log || true)
# A failure after the 200 (re-INVITE or BYE) is a call that was up.
fail_up=$(grep '^FAIL ' calls.log | grep -vc 'step=invite' || true)

# Recovery: after the flood, full service (the block on the flood's
# sources does not touch the trunk).
sleep 2
timeout 60 sipp $IP:$P_PROXY -sf uac.xml -i $IP -p $P_UAC -r 50 -m 200 -d 200 \
    -recv_timeout 5000 -nostdin -timeout 50s -trace_logs -log_file rec.log >rec.out 2>&1 || true
rec_ok=$(grep -c '^OK ' rec.log || true)
HWM=$(hwm_kb)
echo "FLOOD_RESULT calls=$CALLS ok=$ok failed=$fail failed_after_answer=$fail_up" \
     "fail_pct=$(awk -v f="$fail" -v c="$CALLS" 'BEGIN{printf "%.2f", 100*f/c}')" \
     "rss_before_mb=$((RSS_BEFORE / 1024)) rss_after_flood_mb=$((RSS_FLOOD / 1024)) rss_peak_mb=$((HWM / 1024))" \
     "recovery_ok=$rec_ok/200 work=$WORK"
