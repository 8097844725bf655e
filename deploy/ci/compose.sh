#!/usr/bin/env bash
# compose.yaml, unmodified (deploy/ci/compose.ci.yaml swaps only the PostgreSQL/Redis images and the build
# base), brought up with --wait; then the production smoke test through a TLS-terminating nginx ingress,
# every check passing, and the webhook's note read back from an SDP fake container.
set -euo pipefail
fail() { echo "FAIL (compose): $*" >&2; exit 1; }
compose() { timeout "${T:-120}" docker compose -f compose.yaml -f deploy/ci/compose.ci.yaml --env-file "$CI_RUN/compose.env" "$@"; }
figure() { echo "$1: $2" | tee -a "$FIGURES"; }
net=ticket-enhancer_default
host=ticket-enhancer.ci.test

t0=$(date +%s.%N)
T=300 compose up -d --wait --no-build --wait-timeout 240 >"$CI_RUN/compose-up.log" 2>&1 || { cat "$CI_RUN/compose-up.log"; { compose ps -a; compose logs --tail 40; fail "up --wait"; }; }
figure "compose up --wait (5 services, fresh volumes), s" "$(python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$t0")"

state() { docker inspect --format "$2" "$(compose ps -aq "$1")"; }
for svc in postgres redis web worker; do
  [ "$(state "$svc" '{{.State.Health.Status}}')" = healthy ] || fail "$svc is not healthy"
done
[ "$(compose ps -aq migrate | wc -l)" = 1 ] || fail "more than one migrate container"
[ "$(state migrate '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}')" = "exited 0 0" ] ||
  fail "migrate: $(state migrate '{{.State.Status}} exit {{.State.ExitCode}} restarts {{.RestartCount}}')"
compose logs --no-color migrate >"$CI_RUN/migrate.log" 2>&1
grep -q 'Applying tickets.0001' "$CI_RUN/migrate.log" || fail "migrate did not apply the migrations"
finished="$(state migrate '{{.State.FinishedAt}}')"
for svc in web worker; do
  started="$(state "$svc" '{{.State.StartedAt}}')"
  [[ "$started" > "$finished" ]] || fail "$svc started ($started) before migrate finished ($finished)"
done
echo "ok   all services healthy; migrate ran once, exit 0; web and worker started after it finished"
curl_ready() { python3 -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:$WEB_PORT/api/v1/ready', timeout=3).status != 200)" 2>/dev/null; }
curl_ready || fail "web's published port (loopback only) does not answer /api/v1/ready"

# Start to ready: restart web and time until /api/v1/ready answers 200 on the published port.
web_id="$(compose ps -q web)"
timeout 30 docker stop -t 10 "$web_id" >/dev/null
t0=$(date +%s.%N)
timeout 30 docker start "$web_id" >/dev/null
for _ in $(seq 1 300); do curl_ready && break; sleep 0.1; done
curl_ready || fail "web not ready 30 s after a restart"
figure "web start to ready (container start -> /api/v1/ready 200), s" "$(python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$t0")"

# The TLS stand-in ingress: a CA made here, a server certificate for $host, nginx in front of web.
tls="$CI_RUN/tls"
mkdir -p "$tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/O=Ticket Enhancer CI/CN=CI root" \
  -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$host" -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$host" >"$tls/ext"
openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial -days 30 \
  -extfile "$tls/ext" -out "$tls/server.crt" 2>/dev/null
chmod 0644 "$tls"/*
timeout 60 docker run -d --name te-ingress --network "$net" --network-alias "$host" --read-only --tmpfs /tmp \
  -v "$REPO/deploy/ci/ingress/nginx.conf:/etc/nginx/nginx.conf:ro" \
  -v "$REPO/deploy/ci/ingress/proxy_headers.conf:/etc/nginx/proxy_headers.conf:ro" \
  -v "$tls:/etc/nginx/tls:ro" local/nginx:ci >/dev/null 2>&1

# The SDP fake (tests/fakes/sdp.py) as a server container, seeded with the request the smoke test uses.
request_id=ci-$(date +%s)
sdp_key="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
printf '{"id": "%s", "subject": "CI smoke: VPN drops", "status": {"name": "Open"}}\n' "$request_id" >"$CI_RUN/sdp-seed.json"
chmod 0644 "$CI_RUN/sdp-seed.json"
timeout 60 docker run -d --name te-sdp --network "$net" --network-alias sdp.ci.test --read-only -e PYTHONDONTWRITEBYTECODE=1 \
  -v "$REPO/tests:/src/tests:ro" -v "$CI_RUN/sdp-seed.json:/seed.json:ro" -w /src -u 65534:65534 local/python:3.12-ci \
  python -m tests.fakes.sdp --host 0.0.0.0 --port 8081 --api-key "$sdp_key" --seed /seed.json >/dev/null 2>&1

web() { compose exec -T web "$@"; }
secret="$(web python manage.py create_tenant ci --name "CI" --sdp-url http://sdp.ci.test:8081 --sdp-api-key "$sdp_key" |
  grep -oE 'whsec_[A-Za-z0-9+/=]+' | head -1)"
[ -n "$secret" ] || fail "create_tenant printed no whsec_ secret"
token="$(web python manage.py shell -c "
from enhancements.services import api_token_create
from tickets.models import Tenant
print(api_token_create(tenant=Tenant.objects.get(slug='ci'), name='ci smoke')[1])" | tail -1)"

tools() { timeout 180 docker run --rm --network "$net" --read-only -e PYTHONDONTWRITEBYTECODE=1 -u 65534:65534 \
  -v "$REPO/runbook:/src/runbook:ro" -v "$tls/ca.crt:/ca.crt:ro" local/python:3.12-ci "$@" 2>/dev/null; }
report="$(tools python /src/runbook/smoke_test.py --base-url "https://$host" --tenant ci --secret "$secret" \
  --api-token "$token" --expect-note --request-id "$request_id" --ca-file /ca.crt \
  --metrics-url http://web:8000/metrics --timeout 90 --json)" || true
python3 - "$report" <<'PY' || { compose logs --tail 30 web worker; docker logs --tail 20 te-ingress; fail "smoke test"; }
import json, sys
report = json.loads(sys.argv[1])
for check in report["checks"]:
    print(f"     smoke {check['status']:<4} {check['name']:<15} {check['ms']:>6} ms  {check['detail']}")
sys.exit(0 if report["ok"] and report["skipped"] == 0 and report["passed"] == len(report["checks"]) == 8 else 1)
PY
echo "ok   smoke test: every check passed (HTTPS, certificate, redirect included), none skipped"

notes="$(tools python -c "
import json, urllib.request
r = urllib.request.Request('http://sdp.ci.test:8081/api/v3/requests/$request_id/notes',
    headers={'authtoken': '$sdp_key', 'Accept': 'application/vnd.manageengine.sdp.v3+json'})
data = json.load(urllib.request.urlopen(r, timeout=10))
notes = data.get('notes') or data.get('request_notes') or []
print(len(notes), sum('ticket-enhancer' in json.dumps(n).lower() or 'enhancement' in json.dumps(n).lower() for n in notes))")"
[ "$(cut -d' ' -f1 <<<"$notes")" = 1 ] || fail "SDP fake holds $notes notes on $request_id, expected exactly 1"
echo "ok   the signed webhook through the ingress became exactly one note on request $request_id in the SDP fake"
