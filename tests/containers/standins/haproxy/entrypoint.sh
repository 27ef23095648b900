#!/bin/sh
# As haproxy's official image does: `haproxy ARGS` runs in the foreground, master-worker.
set -e
if [ "${1#-}" != "$1" ]; then
    set -- haproxy "$@"
fi
if [ "$1" = haproxy ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
