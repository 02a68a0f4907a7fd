#!/usr/bin/env bash
# tests/deb/run.sh - the Debian package, built, checked, installed, run once
# and purged.
#
# Usage: tests/deb/run.sh        (needs root: dpkg, ip netns)
#
# 1. deploy/debian/build.sh builds target/debian/sipedge_*.deb (a no-op
#    cargo build after .ci/run's release build, then cargo deb).
# 2. lintian checks it; any E: or W: tag fails (justified overrides live
#    in deploy/debian/lintian-overrides, shipped in the package).
# 3. dpkg installs it; the man page must render with no groff warning
#    (man -l), the bash completion must parse (bash -n) and complete
#    `sipedge ch` to check-config, /etc/sipedge/proxy.toml must be a
#    conffile and the unit must name the installed binary.
# 4. The installed /usr/bin/sipedge runs the installed, unedited
#    /etc/sipedge/proxy.toml as the unit's ExecStartPre and ExecStart do
#    (read from the installed unit: systemd is not PID 1 on CI machines, so
#    the command lines are run by hand, not by systemctl), inside a
#    network namespace made for the run that holds the config's VIP and a
#    carrier address from its [security] trusted network, on lo. /run/sipedge
#    (the unit's RuntimeDirectory) is made for the run and removed.
#    Checks: OPTIONS to the VIP from the carrier address gets 200 and from an
#    untrusted address 403 (sipp), /metrics and /health/live answer on the
#    admin loopback address and list the nodes of the installed
#    dispatcher.list, `sipedge ctl list` shows them, SIGTERM ends it with 0.
# 5. dpkg --purge removes it: /usr/bin/sipedge and /etc/sipedge must be gone.
#
# Refuses to run (exit 2) when a sipedge package is already installed or
# /run/sipedge exists: it would replace or disturb a real installation.
# Without root or `ip netns` it prints "SKIP ..." and exits 77. Installs
# lintian, sip-tester, curl, man-db and iproute2 with apt-get when missing;
# cargo-deb must be installed (.ci/run does it). About 30 s after the
# release build (lintian takes most of it); every process under `timeout`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KEEP=${DEB_KEEP:-0}
SIP_PORT=5060
ADMIN=127.0.0.1:9090

log() { echo "[deb $(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 2; }
fail() { log "FAIL: $*"; exit 1; }
skip() { echo "SKIP deb: $* -- the package test did NOT run" >&2; exit 77; }

[ "$(id -u)" -eq 0 ] || skip "needs root (dpkg, network namespaces)"
PATH=$PATH:/usr/sbin:/sbin
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v man >/dev/null 2>&1 || missing+=(man-db)
if (( ${#missing[@]} > 0 )); then
    log "installing ${missing[*]}"
    apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null
fi
for t in ip lintian sipp curl man dpkg timeout cargo-deb; do
    command -v "$t" >/dev/null 2>&1 || die "'$t' is needed"
done
if dpkg-query -W -f='${Status}' sipedge 2>/dev/null | grep -q 'installed'; then
    die "a sipedge package is installed here already; this test would replace it"
fi
[ ! -e /run/sipedge ] || die "/run/sipedge exists (a sipedge running here?)"

NS=sipedge-deb-$$-$RANDOM
ip netns add "$NS" 2>/dev/null || skip "ip netns add fails here (no CAP_SYS_ADMIN?)"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sipedge-deb.XXXXXX")
INSTALLED=0
RUNDIR=0
PROXY=""

on_exit() {
    local rc=$?
    [ -z "$PROXY" ] || kill -KILL "$PROXY" 2>/dev/null || true
    local pids
    pids=$(ip netns pids "$NS" 2>/dev/null || true)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    (( INSTALLED == 0 )) || dpkg --purge sipedge >/dev/null 2>&1 || true
    (( RUNDIR == 0 )) || rm -rf /run/sipedge
    if (( rc == 0 )) && [ "$KEEP" != 1 ]; then
        rm -rf "$WORK"
    else
        log "work directory kept: $WORK"
    fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ---- 1. build -----------------------------------------------------------------
log "building the package"
"$REPO/deploy/debian/build.sh" >"$WORK/build.out" 2>&1 || {
    tail -n 30 "$WORK/build.out" >&2
    fail "deploy/debian/build.sh failed"
}
DEB=$(tail -n 1 "$WORK/build.out")
[ -f "$DEB" ] || fail "build.sh named no .deb ($DEB)"
log "built $DEB ($(du -h "$DEB" | cut -f1))"

# ---- 2. lintian ---------------------------------------------------------------
log "lintian"
lintian_rc=0
timeout 300 lintian --fail-on error,warning --display-info "$DEB" >"$WORK/lintian.out" 2>&1 || lintian_rc=$?
cat "$WORK/lintian.out" >&2
(( lintian_rc == 0 )) || fail "lintian reports errors or warnings (above), exit $lintian_rc"
if grep -E '^[EW]: ' "$WORK/lintian.out" >/dev/null; then fail "lintian E:/W: tags (above)"; fi

# ---- 3. install ---------------------------------------------------------------
log "installing"
INSTALLED=1
dpkg -i "$DEB" >"$WORK/dpkg.out" 2>&1 || { cat "$WORK/dpkg.out" >&2; fail "dpkg -i failed"; }
[ -x /usr/bin/sipedge ] || fail "no /usr/bin/sipedge"
conffiles=$(dpkg-query -W -f='${Conffiles}' sipedge)
for f in /etc/sipedge/proxy.toml /etc/sipedge/dispatcher.list; do
    grep -q " $f " <<<"$conffiles" || fail "$f is not a conffile: $conffiles"
done
[ -f /usr/lib/sysctl.d/50-sipedge.conf ] || fail "no sysctl.d file"
UNIT=$(dpkg -L sipedge | grep '/systemd/system/sipedge.service$') || fail "no unit in the package"
ExecStartPre=$(sed -n 's/^ExecStartPre=//p' "$UNIT")
ExecStart=$(sed -n 's/^ExecStart=//p' "$UNIT")
[[ "$ExecStart" == "/usr/bin/sipedge "* ]] || fail "ExecStart does not run /usr/bin/sipedge: $ExecStart"
if command -v systemd-analyze >/dev/null 2>&1; then
    timeout 30 systemd-analyze verify "$UNIT" >"$WORK/verify.out" 2>&1 ||
        { cat "$WORK/verify.out" >&2; fail "systemd-analyze verify $UNIT"; }
fi

man_page=$(dpkg -L sipedge | grep '/man1/sipedge\.1') || fail "no sipedge.1"
MANWIDTH=80 timeout 30 man --warnings -l "$man_page" >"$WORK/man.txt" 2>"$WORK/man.err" ||
    fail "man -l $man_page failed: $(cat "$WORK/man.err")"
[ ! -s "$WORK/man.err" ] || fail "man -l $man_page warns: $(cat "$WORK/man.err")"
for section in SYNOPSIS OPTIONS SUBCOMMANDS FILES SIGNALS "EXIT STATUS"; do
    grep -q "^$section" "$WORK/man.txt" || fail "sipedge.1 has no $section section"
done
BASH_COMPLETION=/usr/share/bash-completion/completions/sipedge
bash -n "$BASH_COMPLETION" || fail "$BASH_COMPLETION does not parse"
got=$(bash -c "source $BASH_COMPLETION; COMP_WORDS=(sipedge ch); COMP_CWORD=1; COMP_LINE='sipedge ch'; COMP_POINT=10; _sipedge sipedge ch sipedge; echo \"\${COMPREPLY[*]}\"")
[ "$got" = check-config ] || fail "bash completion of 'sipedge ch' gives '$got', not check-config"
[ -s /usr/share/zsh/vendor-completions/_sipedge ] || fail "no zsh completion"

# ---- 4. run the installed config in a namespace -------------------------------
CONFIG=/etc/sipedge/proxy.toml
VIP=$(sed -n 's/^advertise = "\([0-9.]*\)"$/\1/p' "$CONFIG")
TRUSTED=$(sed -n 's/^trusted = \["\([0-9]*\.[0-9]*\.[0-9]*\)\.0\/24"\]$/\1/p' "$CONFIG")
[ -n "$VIP" ] && [ -n "$TRUSTED" ] || die "cannot read advertise / trusted from $CONFIG"
CARRIER=$TRUSTED.7
STRANGER=203.0.113.7
ip -n "$NS" link set lo up
for a in "$VIP" "$CARRIER" "$STRANGER"; do ip -n "$NS" addr add "$a/32" dev lo; done
mkdir -m 0755 /run/sipedge
RUNDIR=1

log "ExecStartPre: $ExecStartPre"
ip netns exec "$NS" timeout 20 $ExecStartPre >"$WORK/pre.out" 2>&1 ||
    { cat "$WORK/pre.out" >&2; fail "ExecStartPre failed"; }
log "ExecStart: $ExecStart (VIP $VIP in $NS)"
ip netns exec "$NS" timeout -k 5 120 $ExecStart >"$WORK/sipedge.out" 2>&1 &
PROXY=$!
for ((i = 0; i < 200; i++)); do
    grep -q '^listening on admin:' "$WORK/sipedge.out" && break
    kill -0 "$PROXY" 2>/dev/null || { cat "$WORK/sipedge.out" >&2; fail "sipedge exited at start"; }
    sleep 0.1
done
grep -q "^listening on udp:$VIP:$SIP_PORT\$" "$WORK/sipedge.out" ||
    { cat "$WORK/sipedge.out" >&2; fail "sipedge is not listening on udp:$VIP:$SIP_PORT"; }

options() { # SOURCE EXPECTED_CODE
    cat >"$WORK/options_$2.xml" <<XML
<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="OPTIONS expecting $2">
  <send>
    <![CDATA[
      OPTIONS sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:deb-test@[local_ip]:[local_port]>;tag=[call_number]
      To: <sip:[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      Contact: <sip:deb-test@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>
  <recv response="$2"/>
</scenario>
XML
    (cd "$WORK" && ip netns exec "$NS" timeout -k 5 30 sipp "$VIP:$SIP_PORT" -sf "options_$2.xml" \
        -i "$1" -p 5070 -m 1 -recv_timeout 5000 -timeout 20s -timeout_error -nostdin \
        >"$WORK/sipp_$2.out" 2>&1) ||
        { tail -n 20 "$WORK/sipp_$2.out" >&2; fail "OPTIONS from $1 did not get $2"; }
}
options "$CARRIER" 200
options "$STRANGER" 403
log "OPTIONS: 200 from the carrier $CARRIER, 403 from $STRANGER"

admin() { ip netns exec "$NS" curl -sf --max-time 5 "http://$ADMIN$1"; }
admin /health/live >/dev/null || fail "/health/live does not answer"
admin /metrics >"$WORK/metrics.txt" || fail "/metrics does not answer"
ip netns exec "$NS" timeout 10 /usr/bin/sipedge ctl --admin "http://$ADMIN" list >"$WORK/ctl.out" 2>&1 ||
    { cat "$WORK/ctl.out" >&2; fail "sipedge ctl list failed"; }
nodes=$(awk '!/^#/ && NF >= 2 { print $2 }' /etc/sipedge/dispatcher.list)
[ -n "$nodes" ] || die "no node in /etc/sipedge/dispatcher.list"
for uri in $nodes; do
    grep -q "^sipedge_destination_up{.*uri=\"$uri\"" "$WORK/metrics.txt" ||
        fail "/metrics has no sipedge_destination_up for $uri of dispatcher.list"
    grep -qF "$uri" "$WORK/ctl.out" || fail "sipedge ctl list does not show $uri"
done
log "/metrics, /health/live and ctl list answer on $ADMIN"

kill -TERM "$PROXY"
rc=0
wait "$PROXY" || rc=$?
PROXY=""
(( rc == 0 )) || { tail -n 20 "$WORK/sipedge.out" >&2; fail "sipedge exited $rc on SIGTERM"; }

# ---- 5. purge -----------------------------------------------------------------
dpkg --purge sipedge >"$WORK/purge.out" 2>&1 || { cat "$WORK/purge.out" >&2; fail "dpkg --purge failed"; }
INSTALLED=0
[ ! -e /usr/bin/sipedge ] || fail "/usr/bin/sipedge left after purge"
[ ! -e /etc/sipedge ] || fail "/etc/sipedge left after purge: $(ls -A /etc/sipedge)"
echo "PASS deb: $(basename "$DEB") built, lintian clean, installed, answered OPTIONS and /metrics in $NS, purged"
