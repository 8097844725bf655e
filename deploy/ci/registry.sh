#!/usr/bin/env bash
# Run runbook/deployment.md section 1 as written against a local registry (Debian's docker-registry on
# 127.0.0.1): build + tag + push, the checks before pushing, then pull back by tag and by digest after
# dropping every local copy. The only CI addition is the build seam (stand-in base, host network for pip),
# put in by wrapping `docker build`.
set -euo pipefail
fail() { echo "FAIL (registry): $*" >&2; exit 1; }
runbook="$REPO/runbook/deployment.md"
block() {
  awk -v h="$1" -v n="${2:-1}" 'index($0, h) == 1 {f = 1; next}
    f && /^```sh/ {c++; if (c == n) {b = 1}; next} b && /^```/ {exit} b {print}' "$runbook"
}

port="$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")"
mkdir -p "$CI_RUN/registry"
cat >"$CI_RUN/registry/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $CI_RUN/registry/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
YAML
docker-registry serve "$CI_RUN/registry/config.yml" >"$CI_RUN/registry/log" 2>&1 &
echo $! >"$CI_RUN/registry.pid"
for _ in $(seq 1 30); do
  python3 -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$port/v2/', timeout=2)" 2>/dev/null && break
  sleep 0.5
done

export REGISTRY="127.0.0.1:$port" VERSION=0.0.0-ci
build_push="$(block '## 1. Build and push the image' 1)"
before_push="$(block '## 1. Build and push the image' 2)"
verify="$(block '## 1. Build and push the image' 3)"
for part in build_push before_push verify; do [ -n "${!part}" ] || fail "runbook block '$part' not found"; done
grep -q 'docker push' <<<"$build_push" || fail "the runbook's build block pushes nothing"

wrapper='docker() { if [ "$1" = build ]; then shift; timeout 600 docker build -q --network host \
  --build-arg PYTHON_IMAGE=local/python:3.12-ci --build-arg BUILDER_IMAGE=local/python:3.12-ci-builder "$@";
  else timeout 300 docker "$@"; fi; }'
t0=$(date +%s.%N)
bash -euo pipefail -c "$wrapper"$'\n'"$build_push" >"$CI_RUN/registry/push.log" 2>&1 || {
  cat "$CI_RUN/registry/push.log" >&2; fail "runbook build-and-push block failed"; }
echo "ok   runbook build + push: $(grep -c 'digest: sha256' "$CI_RUN/registry/push.log") tags pushed" \
  "($(python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$t0") s, layers cached)"
out="$(bash -euo pipefail -c "$wrapper"$'\n'"$before_push" 2>&1)" || { echo "$out" >&2; fail "checks before pushing failed"; }
grep -q 'uid=10001' <<<"$out" || fail "image does not run as uid 10001: $out"
echo "ok   runbook checks before pushing (id, check --deploy)"

# Pull back for real: remove every local reference to the pushed image first.
for tag in "$(git -C "$REPO" rev-parse --short=12 HEAD)" "$VERSION" latest; do
  timeout 60 docker rmi "$REGISTRY/ticket-enhancer:$tag" >/dev/null
done
tags="$(python3 -c "import json, urllib.request; print(' '.join(sorted(json.load(urllib.request.urlopen('http://$REGISTRY/v2/ticket-enhancer/tags/list', timeout=5))['tags'])))")"
echo "ok   registry holds tags: $tags"
[ "$(wc -w <<<"$tags")" -eq 3 ] || fail "expected 3 tags (SHA, version, latest), got: $tags"
out="$(GIT_SHA="$(git -C "$REPO" rev-parse --short=12 HEAD)" bash -euo pipefail -c "$wrapper"$'\n'"$verify" 2>&1)" || {
  echo "$out" >&2; fail "runbook pull verification failed"; }
grep -q 'same image' <<<"$out" || fail "tags do not resolve to one image: $out"
grep -q "^$VERSION $(git -C "$REPO" rev-parse --short=12 HEAD)\$" <<<"$out" || fail "labels do not name the release: $out"
grep -q 'uid=10001' <<<"$out" || fail "pulled image does not run as uid 10001"
echo "ok   pulled back by tag and by digest; labels name $VERSION and the commit; runs as uid 10001"
