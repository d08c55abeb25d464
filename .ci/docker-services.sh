#!/usr/bin/env bash
# Local services for image builds and their tests, started only when missing:
#   - a Docker engine on its own socket (not the system one), state under $STATE
#   - an OCI registry (docker-registry) on 127.0.0.1:5050
#   - the base image cogkit-base/python:3.11-slim, made with debootstrap, since
#     no registry can be pulled from here
# Exports nothing. Prints the variables to use on stdout, as `export` lines:
#   eval "$(bash .ci/docker-services.sh --env)"
# Progress goes to stderr; --env keeps it to errors. --stop stops what it started.
set -euo pipefail

STATE=${COGKIT_SERVICES_DIR:-/var/lib/cogkit-services}
SOCK=${COGKIT_DOCKER_SOCK:-/var/run/cogkit-docker.sock}
EXEC_ROOT=/run/cogkit-docker          # short: containerd's socket paths have a length limit
REGISTRY_ADDR=${COGKIT_REGISTRY_ADDR:-127.0.0.1:5050}
PREFIX=${COGKIT_BASE_IMAGE_PREFIX:-cogkit-base/}
BASE_IMAGE="${PREFIX}python:3.11-slim"  # what python:3.11-slim maps to (cogkit.build.dockerfile)
MIRROR=${COGKIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER_HOST_VALUE="unix://$SOCK"

quiet=0
case "${1:-}" in
  --env) quiet=1 ;;
  --stop) stop=1 ;;
  "") ;;
  *) echo "usage: $0 [--env|--stop]" >&2; exit 2 ;;
esac
say() { [ "$quiet" = 1 ] || echo "docker-services: $*" >&2; }
die() { echo "docker-services: error: $*" >&2; exit 1; }

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
# The docker CLI on PATH may be newer than the engine; pin the API it speaks.
dk() { DOCKER_HOST="$DOCKER_HOST_VALUE" DOCKER_API_VERSION=1.41 docker "$@"; }
engine_up() { dk version >/dev/null 2>&1; }
registry_up() { curl -fsS -o /dev/null "http://$REGISTRY_ADDR/v2/" 2>/dev/null; }

stop_pid() {  # stop the process whose id is in file $1, if it is alive
  if [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; then
    $SUDO kill "$(cat "$1")"
    for _ in $(seq 50); do kill -0 "$(cat "$1")" 2>/dev/null || break; sleep 0.2; done
  fi
  $SUDO rm -f "$1"
}

if [ "${stop:-0}" = 1 ]; then
  stop_pid "$STATE/registry.pid"
  stop_pid "$EXEC_ROOT.pid"
  say "stopped"
  exit 0
fi

# --- packages ---------------------------------------------------------------
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
command -v htpasswd >/dev/null || need+=(apache2-utils)  # tests start a registry with passwords
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2
fi
$SUDO mkdir -p "$STATE"

# --- Docker engine ----------------------------------------------------------
if ! engine_up; then
  say "starting dockerd on $SOCK (state in $STATE/docker, log in $STATE/dockerd.log)"
  stop_pid "$EXEC_ROOT.pid"   # a stale or hung engine from an earlier run
  $SUDO rm -f "$SOCK"
  # No default bridge and no iptables rules: builds and containers use the host
  # network (--network host), so nothing is routed to private address ranges.
  $SUDO setsid nohup dockerd --host "unix://$SOCK" --data-root "$STATE/docker" --exec-root "$EXEC_ROOT" \
    --pidfile "$EXEC_ROOT.pid" --bridge none --iptables=false --ip-forward=false --ip-masq=false \
    >"$STATE/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 120); do engine_up && break; sleep 0.5; done
  engine_up || die "dockerd did not answer on $SOCK within 60 s; see $STATE/dockerd.log:
$(tail -20 "$STATE/dockerd.log" 2>/dev/null)"
fi
say "engine ready: DOCKER_HOST=$DOCKER_HOST_VALUE"

# --- registry ---------------------------------------------------------------
if ! registry_up; then
  say "starting docker-registry on $REGISTRY_ADDR (storage in $STATE/registry)"
  stop_pid "$STATE/registry.pid"
  $SUDO tee "$STATE/registry.yml" >/dev/null <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
  $SUDO setsid nohup docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 </dev/null &
  echo $! | $SUDO tee "$STATE/registry.pid" >/dev/null
  for _ in $(seq 60); do registry_up && break; sleep 0.5; done
  registry_up || die "the registry did not answer on $REGISTRY_ADDR within 30 s; see $STATE/registry.log:
$(tail -20 "$STATE/registry.log" 2>/dev/null)"
fi
say "registry ready: http://$REGISTRY_ADDR"

# --- base image -------------------------------------------------------------
if ! dk image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "building $BASE_IMAGE with debootstrap (about a minute)"
  root="$STATE/rootfs.$$"
  $SUDO rm -rf "$root"
  if ! $SUDO debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
       bookworm "$root" "$MIRROR" >"$STATE/debootstrap.log" 2>&1; then
    $SUDO rm -rf "$root"
    die "debootstrap failed; see $STATE/debootstrap.log:
$(tail -20 "$STATE/debootstrap.log")"
  fi
  # Slim like the official image: no package caches, docs or locales.
  $SUDO rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
  $SUDO ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  $SUDO tar -C "$root" -c . | dk import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
  $SUDO rm -rf "$root"
fi
say "base image ready: $BASE_IMAGE"

echo "export DOCKER_HOST=$DOCKER_HOST_VALUE"
echo "export COGKIT_BASE_IMAGE_PREFIX=$PREFIX"
echo "export COGKIT_TEST_REGISTRY=$REGISTRY_ADDR"
