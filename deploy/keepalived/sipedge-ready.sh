#!/bin/sh
# keepalived health check (vrrp_script): exit 0 when sipedge is ready for
# traffic, i.e. /health/ready answers 200. ADMIN is sipedge's [admin]
# listen address.
#
# On the standby (sipedge-notify.sh wrote backup or fault) probing must be
# paused; a sipedge restarted there starts probing, so pause it again here
# (the standby's probes would time out, and its nodes look down). Paused,
# sipedge is ready while it serves.
# /health/* needs no token and answers however many other clients hold
# admin connections; `sipedge ctl` reads the [admin] token_file, when
# sipedge has one, from the file $SIPEDGE_ADMIN_TOKEN_FILE names.
if [ -z "$SIPEDGE_ADMIN_TOKEN_FILE" ] && [ -r /etc/sipedge/admin.token ]; then
    export SIPEDGE_ADMIN_TOKEN_FILE=/etc/sipedge/admin.token
fi
ADMIN="${SIPEDGE_ADMIN:-http://127.0.0.1:9090}"
SIPEDGE="${SIPEDGE_BIN:-/usr/local/bin/sipedge}"
STATE_FILE="${SIPEDGE_VRRP_STATE:-/run/sipedge-vrrp-state}"
case "$(cat "$STATE_FILE" 2>/dev/null)" in
    backup|fault)
        if "$SIPEDGE" ctl --admin "$ADMIN" ping-active 2>/dev/null | grep -q '^probing: on'; then
            "$SIPEDGE" ctl --admin "$ADMIN" ping-active off >/dev/null 2>&1
            logger -t sipedge-ready "standby: probing paused again (sipedge restarted?)" 2>/dev/null
        fi
        ;;
esac
exec curl --silent --fail --max-time 1 --output /dev/null "$ADMIN/health/ready"
