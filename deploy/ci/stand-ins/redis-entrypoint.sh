#!/bin/sh
# CI stand-in for the official redis image's entrypoint: runs redis-server as "redis" in /data,
# listening on every interface of the container (protected mode off, as the official image does).
set -eu
if [ "$(id -u)" = 0 ]; then
  chown -R redis:redis /data
  exec setpriv --reuid redis --regid redis --init-groups "$0" "$@"
fi
if [ "${1:-}" = redis-server ]; then
  shift
  exec redis-server --bind '0.0.0.0' --protected-mode no --dir /data "$@"
fi
exec "$@"
