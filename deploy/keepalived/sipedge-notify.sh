#!/bin/sh
# keepalived notify script: the VIP holder probes the FreeSWITCH pool, the
# standby pauses probing (Kamailio: dispatcher.ping_active 1 / 0). The
# standby's sipedge sends from the VIP it does not hold, so the nodes'
# answers to its probes would reach the other box: probing there would only
# time out and mark every node down. Paused, sipedge answers /health/ready
# with 200 while it serves, and probes every node the moment it resumes.
#
# The VRRP state is also written to $SIPEDGE_VRRP_STATE, where
# sipedge-ready.sh finds it: a sipedge restarted on the standby starts with
# probing on, and no VRRP transition would tell it to pause.
ADMIN="${SIPEDGE_ADMIN:-http://127.0.0.1:9090}"
SIPEDGE="${SIPEDGE_BIN:-/usr/local/bin/sipedge}"
# The [admin] token_file, when sipedge has one: `sipedge ctl` reads the
# token from the file $SIPEDGE_ADMIN_TOKEN_FILE names.
if [ -z "$SIPEDGE_ADMIN_TOKEN_FILE" ] && [ -r /etc/sipedge/admin.token ]; then
    export SIPEDGE_ADMIN_TOKEN_FILE=/etc/sipedge/admin.token
fi
STATE_FILE="${SIPEDGE_VRRP_STATE:-/run/sipedge-vrrp-state}"
case "$1" in
    master) state=on ;;
    backup|fault) state=off ;;
    *) echo "usage: $0 master|backup|fault" >&2; exit 2 ;;
esac
echo "$1" >"$STATE_FILE.tmp" && mv -f "$STATE_FILE.tmp" "$STATE_FILE"
logger -t sipedge-notify "VRRP $1: probing $state" 2>/dev/null
exec "$SIPEDGE" ctl --admin "$ADMIN" ping-active "$state"
