#!/usr/bin/env bash
# Assertions on the built image ($1). Run by deploy/ci/check.sh; any failure exits non-zero.
set -euo pipefail
img="$1"
fail() { echo "FAIL (image): $*" >&2; exit 1; }
run() { timeout 120 docker run --rm --network none "$@" 2>/dev/null; }

user="$(docker image inspect --format '{{.Config.User}}' "$img")"
[ "$user" = "10001:10001" ] || fail "image USER is '$user', not 10001:10001"
[ "$(run "$img" id -u)" = 10001 ] || fail "the default process does not run as uid 10001"
echo "ok   runs as uid/gid 10001 (USER $user)"

# No compiler, assembler, linker or build system on PATH, and no Debian package of the toolchain.
tools="$(run "$img" sh -c 'for t in gcc cc c++ g++ clang cpp make cmake ld as gfortran rustc cargo go; do
  command -v "$t"; done; dpkg-query -W -f "\${Package}\n" 2>/dev/null |
  grep -vE "^(gcc-[0-9]+-base|libgcc)" | grep -E "^(gcc|g\+\+|cpp|binutils|make|build-essential|libc6-dev|libpq-dev|python3?-dev)(-[0-9.]+)?$" || true')"
[ -z "$tools" ] || fail "build tools in the image: $tools"
echo "ok   no compiler or build tools"

run "$img" pip check >/dev/null || fail "pip check: $(run "$img" pip check)"
echo "ok   pip check: no broken requirements"

run "$img" sh -c 'test -s /app/staticfiles/staticfiles.json && ls /app/staticfiles/admin/css/base.*.css >/dev/null &&
  ls /app/staticfiles/admin/css/base.*.css.gz >/dev/null && ! test -w /app/staticfiles' ||
  fail "collected static files (manifest, hashed and compressed copies, read-only) missing"
echo "ok   static files collected (manifest, hashed + compressed), not writable by the app user"

# The CI-only trust of the egress proxy must stay in the builder stage.
run "$img" sh -c 'test ! -e /etc/pip.conf' || fail "/etc/pip.conf reached the runtime image"
if ! cmp -s /etc/ssl/certs/ca-certificates.crt <(run "$img" cat /etc/ssl/certs/ca-certificates.crt); then
  echo "ok   runtime image has Debian's CA bundle, not the build machine's"
else
  echo "note runtime CA bundle equals this machine's (no egress CA in play here)"
fi

# check --deploy with the production ConfigMap values, freshly generated secrets, managed-service URLs,
# read-only root filesystem. The one warning allowed is W008 (SECURE_SSL_REDIRECT off): TLS and the
# HTTP->HTTPS redirect are the ingress's job (compose step checks the redirect through one).
envfile="$(mktemp)"
grep -hvE '^\s*(#|$)' "$(dirname "$0")/../k8s/base/config.env" "$(dirname "$0")/../k8s/overlays/production/config.env" >"$envfile"
{
  echo "SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))')"
  echo "FIELD_ENCRYPTION_KEY=$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')"
  echo "DATABASE_URL=postgres://te:pw@db.invalid:5432/te?sslmode=require"
  echo "REDIS_URL=rediss://:pw@redis.invalid:6380/0"
} >>"$envfile"
out="$(timeout 120 docker run --rm --network none --read-only --tmpfs /tmp --env-file "$envfile" "$img" \
  python manage.py check --deploy --fail-level WARNING 2>&1)" && rc=0 || rc=$?
rm -f "$envfile"
issues="$(grep -oE '\(([a-z_]+\.)?[A-Z][0-9]{3}\)' <<<"$out" | sort -u | tr '\n' ' ')"
if [ "$rc" -ne 0 ] && [ "$issues" != "(security.W008) " ]; then
  echo "$out" >&2
  fail "manage.py check --deploy reported: ${issues:-exit $rc}"
fi
echo "ok   manage.py check --deploy with production values: ${issues:-no issues} (W008 is the ingress's redirect)"
