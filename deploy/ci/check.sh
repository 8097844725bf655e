#!/usr/bin/env bash
# The container check: the deploy path executed, not just validated. Meant as stage 3 of .ci/run;
# by hand (root, Debian 12, nothing else needed):  bash deploy/ci/check.sh
#
#   1 engine     install docker.io + Compose v2 when missing, start a private dockerd (deploy/ci/engine.sh)
#   2 bases      stand-in base images from Debian packages (deploy/ci/bases.sh, cached in $CI_CACHE)
#   3 image      build deploy/Dockerfile; assert non-root, no build tools, pip check, static files,
#                check --deploy with production values
#   4 registry   the runbook's tag-and-push block against a local registry; pull back by tag and digest
#   5 compose    compose.yaml up --wait; migrate once, web/worker after it; smoke test through a TLS
#                ingress with every check passing; the webhook's note reaches an SDP fake container
#   6 scenarios  concurrent migrate, rolling upgrade, graceful shutdown (deploy/ci/scenarios.py)
#   7 k8s        the production overlay's Deployments run as the kubelet would (deploy/ci/k8s_harness.py)
#   8 selftest   the harness fails on broken fixtures (deploy/ci/test_harness.py)
# Whatever happens, the EXIT trap removes every container, volume, network and the daemon.
# CI_STEPS="image compose" runs a subset (engine and bases always run). Figures: $CI_RUN/figures.txt,
# printed at the end (docs/benchmarks.md records them).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$REPO/deploy/ci"
cd "$REPO"

# One hard bound on the whole stage, so a hang cannot stall CI: re-run under timeout(1).
if [ -z "${CI_CHECK_CHILD:-}" ]; then
  export CI_CHECK_CHILD=1
  exec timeout --signal=TERM --kill-after=300 "${CI_CHECK_TIMEOUT:-2400}" bash "$0" "$@"
fi

CI_RUN="$(mktemp -d /var/tmp/ticket-enhancer-ci.XXXXXX)"
export CI_RUN
export DOCKER_CONFIG="$CI_RUN/docker-config"
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
# The CLI from the same Debian package as the daemon (a newer CLI elsewhere on PATH only adds warnings).
mkdir -p "$CI_RUN/bin"
[ -x /usr/bin/docker ] && ln -sf /usr/bin/docker "$CI_RUN/bin/docker"
export PATH="$CI_RUN/bin:$PATH"
PYTHON="${CI_PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
STEPS="${CI_STEPS:-image registry compose scenarios k8s selftest}"
FIGURES="$CI_RUN/figures.txt"
: >"$FIGURES"

# shellcheck source=deploy/ci/engine.sh
source "$HERE/engine.sh"
# shellcheck source=deploy/ci/bases.sh
source "$HERE/bases.sh"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  echo "=== container check: cleaning up"
  [ -f "$CI_RUN/registry.pid" ] && kill "$(cat "$CI_RUN/registry.pid")" 2>/dev/null
  if [ -n "${DOCKER_HOST:-}" ] && [ -f "$CI_RUN/compose.env" ]; then
    timeout 90 docker compose "${COMPOSE[@]}" down -v --remove-orphans --timeout 10 >/dev/null 2>&1
  fi
  [ -s "$FIGURES" ] && cp "$FIGURES" "${CI_FIGURES_OUT:-/var/tmp/ticket-enhancer-ci-figures.txt}"
  engine_stop || rc=1
  if [ "$rc" -eq 0 ]; then echo "=== container check: PASSED"; else echo "=== container check: FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

figure() { echo "$1: $2" | tee -a "$FIGURES"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
random() { python3 -c "import secrets; print(secrets.token_urlsafe(${1:-32}))"; }
fernet() { python3 -c "import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())"; }
free_port() { python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
# The sh block that follows a heading in a runbook file (the commands CI runs are the documented ones).
runbook_block() {
  awk -v h="$2" 'index($0, h) == 1 {f = 1; next} f && /^```sh/ {b = 1; next} b && /^```/ {exit} b {print}' "$1"
}

echo "=== 1 engine"
t0="$(now)"
engine_install
engine_start
figure "engine ready (install check + dockerd start), s" "$(since "$t0")"

echo "=== 2 stand-in bases"
t0="$(now)"
build_base_images
figure "stand-in bases (cached rootfs when unchanged), s" "$(since "$t0")"

IMAGE=ticket-enhancer
TAG=ci
APP_IMAGE="$IMAGE:$TAG"
GIT_SHA="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
CI_BUILD_ARGS=(--network host --build-arg PYTHON_IMAGE=local/python:3.12-ci
  --build-arg BUILDER_IMAGE=local/python:3.12-ci-builder)
export IMAGE TAG APP_IMAGE GIT_SHA REPO HERE PYTHON FIGURES

echo "=== 3 image: docker build -f deploy/Dockerfile"
t0="$(now)"
# The same VERSION and GIT_SHA as registry.sh's run of the runbook, so that build is all cached layers.
timeout 600 docker build -q "${CI_BUILD_ARGS[@]}" --build-arg VERSION=0.0.0-ci --build-arg GIT_SHA="$GIT_SHA" \
  -f deploy/Dockerfile -t "$APP_IMAGE" . >/dev/null
figure "image build (deploy/Dockerfile, stand-in base, no layer cache), s" "$(since "$t0")"
figure "image size, MB" "$(docker image inspect --format '{{.Size}}' "$APP_IMAGE" | awk '{printf "%.0f", $1 / 1e6}')"
bash "$HERE/image_checks.sh" "$APP_IMAGE"

if want registry; then
  echo "=== 4 registry: the runbook's tag and push procedure, pulled back by tag and by digest"
  bash "$HERE/registry.sh"
fi

COMPOSE=(-f compose.yaml -f deploy/ci/compose.ci.yaml --env-file "$CI_RUN/compose.env")
if want compose; then
  echo "=== 5 compose: compose.yaml up --wait, smoke test through a TLS ingress, note on an SDP fake"
  WEB_PORT="$(free_port)"
  cat >"$CI_RUN/compose.env" <<ENV
SECRET_KEY=$(random 50)
FIELD_ENCRYPTION_KEY=$(fernet)
POSTGRES_PASSWORD=$(random 24)
IMAGE=$IMAGE
TAG=$TAG
WEB_PORT=127.0.0.1:$WEB_PORT
ALLOWED_HOSTS=ticket-enhancer.ci.test,localhost,127.0.0.1,web
CSRF_TRUSTED_ORIGINS=https://ticket-enhancer.ci.test
PUBLIC_BASE_URL=https://ticket-enhancer.ci.test
SDP_ALLOW_INSECURE_URLS=true
LLM_PROVIDER=offline
ENV
  export WEB_PORT
  bash "$HERE/compose.sh"
fi

if want scenarios; then
  echo "=== 6 scenarios: concurrent migrate, rolling upgrade, graceful shutdown"
  timeout 900 "$PYTHON" "$HERE/scenarios.py" --image "$APP_IMAGE" --figures "$FIGURES"
fi

if [ -f "$CI_RUN/compose.env" ]; then  # free the CPU for the next steps; the trap would do it anyway
  timeout 120 docker compose "${COMPOSE[@]}" down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
  timeout 60 docker rm -f te-ingress te-sdp >/dev/null 2>&1 || true
fi

if want k8s; then
  echo "=== 7 k8s: the production overlay's Deployments, run as the kubelet would"
  kubectl kustomize deploy/k8s/overlays/production >"$CI_RUN/rendered.yaml"
  timeout 400 "$PYTHON" "$HERE/k8s_harness.py" --image "$APP_IMAGE" --manifests "$CI_RUN/rendered.yaml" \
    --values "$HERE/k8s-values.env" --figures "$FIGURES"
fi

if want selftest; then
  echo "=== 8 selftest: broken manifests and a broken Dockerfile make the harness fail"
  t0="$(now)"
  timeout 400 "$PYTHON" -m pytest -q -p no:cacheprovider -p no:django -c /dev/null --rootdir "$HERE" "$HERE/test_harness.py"
  figure "harness self-tests (broken manifests and Dockerfiles), s" "$(since "$t0")"
fi

echo "=== figures"
cat "$FIGURES"
