#!/bin/sh
# keepalived notify script: the VIP holder probes the FreeSWITCH pool, the
# standby pauses probing (Kamailio: dispatcher.ping_active 1 / 0).
ADMIN="${SIPEDGE_ADMIN:-http://127.0.0.1:9090}"
SIPEDGE="${SIPEDGE_BIN:-/usr/local/bin/sipedge}"
case "$1" in
    master) state=on ;;
    backup|fault) state=off ;;
    *) echo "usage: $0 master|backup|fault" >&2; exit 2 ;;
esac
logger -t sipedge-notify "VRRP $1: probing $state"
exec "$SIPEDGE" ctl --admin "$ADMIN" ping-active "$state"
