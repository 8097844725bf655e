#!/usr/bin/env bash
# Stand-in base images for CI, made from Debian packages (no image registry is reachable here).
# Sourced by deploy/ci/check.sh; needs DOCKER_HOST set and debootstrap installed.
#   local/python:3.12-ci          runtime base: Debian 12 minbase + CPython 3.12 in /usr/local
#   local/python:3.12-ci-builder  the same + the host's CA bundle and /etc/pip.conf (pip reaches PyPI
#                                 through this machine's egress proxy); used ONLY for the builder stage
#   local/postgres:15-ci, local/redis:7-ci, local/nginx:ci, local/tools:ci   stand-ins for compose/CI
# Root filesystems are cached as tarballs in $CI_CACHE (outside the repo), keyed by this file's checksum.
set -euo pipefail

CI_CACHE="${CI_CACHE:-/var/cache/ticket-enhancer-ci}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# The interpreter copied into the stand-in base: this machine's CPython 3.12 (pyenv build), because
# Debian 12 ships only 3.11.2 and production runs python:3.12-slim.
if [ -z "${CI_PYTHON_PREFIX:-}" ]; then
  for candidate in "$(pyenv root 2>/dev/null || echo /root/.pyenv)"/versions/3.12.* /usr/local; do
    [ -x "$candidate/bin/python3.12" ] && CI_PYTHON_PREFIX="$candidate"
  done
fi
PY_LIBS="ca-certificates netbase tzdata libssl3 libffi8 zlib1g libbz2-1.0 liblzma5 libsqlite3-0 libreadline8 \
libncursesw6 libuuid1 libgdbm6 libexpat1 libdb5.3"
SERVICE_PKGS="postgresql-15 redis-server nginx-light"

_key() { cat "${BASH_SOURCE[0]}" "$CI_PYTHON_PREFIX/bin/python3.12" | cksum | cut -d' ' -f1; }

_no_daemons() {  # keep package scripts from starting services inside the chroot
  printf '#!/bin/sh\nexit 101\n' >"$1/usr/sbin/policy-rc.d"
  chmod +x "$1/usr/sbin/policy-rc.d"
}

_python_rootfs() {  # $1 = target dir
  local root="$1"
  debootstrap --variant=minbase --include="${PY_LIBS// /,}" bookworm "$root" "$MIRROR" >/dev/null
  # CPython without its test suite, static library, site-packages of the host, or sandbox hooks.
  tar -C "$CI_PYTHON_PREFIX" -c --exclude='lib/python3.12/test' --exclude='lib/python3.12/config-3.12-*' \
      --exclude='lib/python3.12/site-packages/*' --exclude='*/__pycache__' --exclude='*.a' \
      bin/python3.12 lib include | tar -C "$root/usr/local" -x
  ln -sf python3.12 "$root/usr/local/bin/python3"
  ln -sf python3.12 "$root/usr/local/bin/python"
  echo /usr/local/lib >"$root/etc/ld.so.conf.d/usr-local.conf"
  chroot "$root" /sbin/ldconfig
  chroot "$root" /usr/local/bin/python3.12 -m ensurepip --default-pip >/dev/null
  chroot "$root" /usr/local/bin/python3.12 -c 'import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid; print("ok")' >/dev/null
  rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
}

_services_rootfs() {  # $1 = python rootfs dir, $2 = target dir
  cp -a "$1" "$2"
  _no_daemons "$2"
  mkdir -p "$2/etc/postgresql-common"
  echo "create_main_cluster = false" >"$2/etc/postgresql-common/createcluster.conf"
  echo "deb $MIRROR bookworm main" >"$2/etc/apt/sources.list"
  cp /etc/resolv.conf "$2/etc/resolv.conf"
  chroot "$2" apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive chroot "$2" apt-get install -y -qq --no-install-recommends $SERVICE_PKGS >/dev/null
  chroot "$2" apt-get clean
  rm -rf "$2/var/lib/apt/lists/"* "$2/etc/resolv.conf" "$2/usr/sbin/policy-rc.d"
  install -m 0755 "$(dirname "${BASH_SOURCE[0]}")/stand-ins/postgres-entrypoint.sh" "$2/usr/local/bin/postgres-entrypoint"
  install -m 0755 "$(dirname "${BASH_SOURCE[0]}")/stand-ins/redis-entrypoint.sh" "$2/usr/local/bin/redis-entrypoint"
}

_derive() {  # $1 = tag, then Dockerfile lines on top of local/services:ci
  local tag="$1"
  shift
  { echo "FROM local/services:ci"; printf '%s\n' "$@"; } | DOCKER_BUILDKIT=0 docker build -q --network none -t "$tag" - >/dev/null
}

build_base_images() {
  [ -x "$CI_PYTHON_PREFIX/bin/python3.12" ] || { echo "no CPython 3.12 found (set CI_PYTHON_PREFIX)" >&2; return 1; }
  local key py svc work
  key="$(_key)"
  py="$CI_CACHE/python-$key.tar"
  svc="$CI_CACHE/services-$key.tar"
  mkdir -p "$CI_CACHE"
  if [ ! -s "$py" ] || [ ! -s "$svc" ]; then
    rm -f "$CI_CACHE"/python-*.tar "$CI_CACHE"/services-*.tar
    work="$(mktemp -d "$CI_CACHE/rootfs.XXXXXX")"
    _python_rootfs "$work/python"
    tar -C "$work/python" -cf "$py.part" . && mv "$py.part" "$py"
    _services_rootfs "$work/python" "$work/services"
    tar -C "$work/services" -cf "$svc.part" . && mv "$svc.part" "$svc"
    rm -rf "$work"
  fi
  local env_py='ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin LANG=C.UTF-8'
  docker import --change "$env_py" --change 'CMD ["python3"]' "$py" local/python:3.12-ci >/dev/null
  # The builder-only base: trusts this machine's egress proxy for pip (never used for the runtime stage).
  local ctx
  ctx="$(mktemp -d)"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$ctx/pip.conf"; else : >"$ctx/pip.conf"; fi
  printf 'FROM local/python:3.12-ci\nCOPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\nCOPY pip.conf /etc/pip.conf\n' \
    >"$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q --network none -t local/python:3.12-ci-builder "$ctx" >/dev/null
  rm -rf "$ctx"
  docker import --change "$env_py" "$svc" local/services:ci >/dev/null
  _derive local/postgres:15-ci 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin PGDATA=/var/lib/postgresql/data' \
    'EXPOSE 5432' 'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]' 'CMD ["postgres"]'
  _derive local/redis:7-ci 'WORKDIR /data' 'EXPOSE 6379' 'ENTRYPOINT ["/usr/local/bin/redis-entrypoint"]' 'CMD ["redis-server"]'
  _derive local/nginx:ci 'CMD ["nginx", "-g", "daemon off;"]'

}
