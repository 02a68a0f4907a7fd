#!/bin/sh
# keepalived notify script: the VIP holder probes the FreeSWITCH pool, the
# standby pauses probing (Kamailio: dispatcher.ping_active 1 / 0).
ADMIN="${SIPEDGE_ADMIN:-http://127.0.0.1:9090}"
SIPEDGE="${SIPEDGE_BIN:-/usr/local/bin/sipedge}"
# The [admin] token_file, when sipedge has one: `sipedge ctl` reads the
# token from the file $SIPEDGE_ADMIN_TOKEN_FILE names.
if [ -z "$SIPEDGE_ADMIN_TOKEN_FILE" ] && [ -r /etc/sipedge/admin.token ]; then
    export SIPEDGE_ADMIN_TOKEN_FILE=/etc/sipedge/admin.token
fi
case "$1" in
    master) state=on ;;
    backup|fault) state=off ;;
    *) echo "usage: $0 master|backup|fault" >&2; exit 2 ;;
esac
logger -t sipedge-notify "VRRP $1: probing $state"
exec "$SIPEDGE" ctl --admin "$ADMIN" ping-active "$state"
