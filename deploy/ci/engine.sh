#!/usr/bin/env bash
# The Docker engine for the container check: installed when missing, started privately, always removed.
# Sourced by deploy/ci/check.sh. Leaves no daemon, container, volume, network, bridge, mount or firewall
# rule behind (engine_stop runs from an EXIT trap, also after a failed step).
#
# The daemon is started so that it cannot disturb the machine's other users:
#   own socket, data root and exec root under $CI_RUN (a temp dir), default ulimit within the hard limit,
#   --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false: no host firewall rule, no routing,
#   --bridge=none: no docker0; compose networks are bridges from a private pool (10.213.0.0/16),
#   --ip=127.0.0.1: a published port listens on loopback only.
# Containers reach each other on their compose network; nothing they run can reach beyond this machine.
# Builds use --network host so pip reaches PyPI exactly as this machine's own pip does.
set -euo pipefail

CI_CACHE="${CI_CACHE:-/var/cache/ticket-enhancer-ci}"

engine_install() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v iptables >/dev/null || missing+=(iptables)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq
    timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Compose v2: Debian 12's docker-compose is v1 (rejects compose.yaml's top-level name:); Debian 13's
  # package holds the v2 plugin and needs only libc6 >= 2.34. Fetched without touching the system's apt
  # sources; cached outside the repository.
  local plugin="$CI_CACHE/compose/docker-compose"
  if ! "$plugin" version >/dev/null 2>&1; then
    if apt-cache policy docker-compose 2>/dev/null | grep -q 'Candidate: 2\.'; then
      timeout 600 apt-get install -y -qq docker-compose >/dev/null
      plugin=/usr/libexec/docker/cli-plugins/docker-compose
    else
      local apt="$CI_CACHE/apt"
      mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$CI_CACHE/compose"
      echo "deb http://deb.debian.org/debian trixie main" >"$apt/sources.list"
      local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache::Archives=$apt/archives")
      timeout 300 apt-get "${opts[@]}" update -qq
      (cd "$apt" && rm -f docker-compose_*.deb && timeout 300 apt-get "${opts[@]}" download docker-compose >/dev/null)
      rm -rf "$apt/x" && dpkg -x "$apt"/docker-compose_*.deb "$apt/x"
      cp "$apt/x/usr/libexec/docker/cli-plugins/docker-compose" "$plugin"
      rm -rf "$apt/x"
    fi
  fi
  mkdir -p "$DOCKER_CONFIG/cli-plugins"
  ln -sf "$plugin" "$DOCKER_CONFIG/cli-plugins/docker-compose"
  docker compose version
}

_net_snapshot() {
  { iptables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9:]*\]//'
    ip6tables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9:]*\]//'
    cat /proc/sys/net/ipv4/ip_forward; } || true
}

engine_start() {
  mkdir -p "$CI_RUN/data" "$CI_RUN/exec"
  ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort >"$CI_RUN/links.before"
  _net_snapshot >"$CI_RUN/net.before"
  dockerd --host "unix://$CI_RUN/docker.sock" --data-root "$CI_RUN/data" --exec-root "$CI_RUN/exec" \
    --pidfile "$CI_RUN/dockerd.pid" --default-ulimit nofile=20000:20000 \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none --ip=127.0.0.1 \
    --default-address-pool base=10.213.0.0/16,size=24 --log-level warn >"$CI_RUN/dockerd.log" 2>&1 &
  echo $! >"$CI_RUN/dockerd.started"
  export DOCKER_HOST="unix://$CI_RUN/docker.sock"
  local i
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$CI_RUN/dockerd.started")" 2>/dev/null || break
    sleep 1
  done
  echo "dockerd did not come up:" >&2
  tail -20 "$CI_RUN/dockerd.log" >&2
  return 1
}

engine_stop() {
  [ -n "${CI_RUN:-}" ] && [ -d "$CI_RUN" ] || return 0
  local pid=""
  [ -f "$CI_RUN/dockerd.started" ] && pid="$(cat "$CI_RUN/dockerd.started")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    local ids
    ids="$(timeout 20 docker ps -aq 2>/dev/null || true)"
    [ -n "$ids" ] && timeout 60 docker rm -f -v $ids >/dev/null 2>&1
    timeout 30 docker volume prune -f >/dev/null 2>&1 || true
    timeout 30 docker volume rm -f $(timeout 10 docker volume ls -q 2>/dev/null) >/dev/null 2>&1 || true
    timeout 30 docker network prune -f >/dev/null 2>&1 || true
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # The containerd dockerd started for itself, if it outlived the daemon.
  local cpid
  cpid="$(cat "$CI_RUN/exec/containerd/containerd.pid" 2>/dev/null || cat "$CI_RUN/data/containerd/containerd.pid" 2>/dev/null || true)"
  [ -n "$cpid" ] && kill -TERM "$cpid" 2>/dev/null || true
  # Mounts left under our directories (overlay layers, network namespaces), deepest first.
  awk -v root="$CI_RUN" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r | while read -r mnt; do
    umount -l "$mnt" 2>/dev/null || true
  done
  # Links that appeared while we ran (compose bridges, veths), never any that existed before.
  if [ -f "$CI_RUN/links.before" ]; then
    ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort >"$CI_RUN/links.after"
    comm -13 "$CI_RUN/links.before" "$CI_RUN/links.after" | grep -E '^(br-|veth|docker)' | while read -r link; do
      ip link delete "$link" 2>/dev/null || true
    done
  fi
  local rc=0
  if [ -f "$CI_RUN/net.before" ]; then
    _net_snapshot >"$CI_RUN/net.after"
    if ! diff -q "$CI_RUN/net.before" "$CI_RUN/net.after" >/dev/null; then
      echo "ERROR: firewall rules or ip_forward changed during the container check:" >&2
      diff "$CI_RUN/net.before" "$CI_RUN/net.after" >&2 || true
      rc=1
    fi
  fi
  rm -rf "$CI_RUN"
  return $rc
}
