#!/bin/sh
# keepalived health check: exit 0 when sipedge is ready for traffic.
# ADMIN is sipedge's [admin] listen address. /health/* needs no token, and
# answers however many other clients hold admin connections.
ADMIN="${SIPEDGE_ADMIN:-http://127.0.0.1:9090}"
exec curl --silent --fail --max-time 1 --output /dev/null "$ADMIN/health/ready"
