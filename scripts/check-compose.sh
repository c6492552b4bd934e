#!/usr/bin/env bash
# Validates compose/docker-compose.yml with Docker Compose itself:
# `docker compose config -q` parses the file, checks it against the Compose
# specification and resolves it, without a Docker engine. When no Compose
# v2 is installed (the docker plugin, or a standalone docker-compose of
# version 2 or later), it says so and exits 0: the check was skipped, not
# passed.
#
# Tributary's side of the file (every TRIBUTARY_* variable, flag and config
# key it uses) is checked by the Go test TestComposeFile in cmd/tributary,
# which needs no Docker at all and runs with `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly FILE=compose/docker-compose.yml

log() { printf 'check-compose: %s\n' "$*"; }

compose=()
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  # Compose v1 (Debian bookworm's docker-compose package) knows an older
  # schema: its verdict on this file is not the one that counts.
  if docker-compose version 2>/dev/null | head -n 1 | grep -Eq 'version v?[2-9]'; then
    compose=(docker-compose)
  else
    log "ignoring $(docker-compose version 2>/dev/null | head -n 1): Compose v1 is not what the file is written for"
  fi
fi

if [ "${#compose[@]}" -eq 0 ]; then
  if command -v docker >/dev/null 2>&1; then
    log "SKIPPED: $(docker --version) is installed, but not its compose plugin (docker compose version fails); $FILE was not validated"
  else
    log "SKIPPED: no docker client on PATH; $FILE was not validated"
  fi
  exit 0
fi

log "$("${compose[@]}" version | head -n 1)"
"${compose[@]}" -f "$FILE" config -q
log "$FILE is valid"
