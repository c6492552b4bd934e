#!/usr/bin/env bash
# Install the Debian packages Tributary's tests rely on:
#   mosquitto          MQTT broker started by integration tests (on its own port)
#   mosquitto-clients  mosquitto_pub / mosquitto_sub for manual and scripted checks
#   kcat               Kafka command-line client (readiness probe, smoke tests)
#   chromium           headless browser for the browser tests (chrome_test.go)
# and, with npm ci, the npm packages pinned in e2e/package-lock.json:
#   wscat              WebSocket client for the JSON WebSocket API smoke tests
#   mqtt               mqtt.js, whose browser bundle the browser tests load
# and, when java or mvn is missing, default-jre-headless and maven, which
# scripts/kafka.sh needs for make test-kafka.
#
# Idempotent: when every needed command is already on PATH nothing is done,
# and npm ci is skipped while e2e/node_modules matches the lock file.
# Works non-interactively as root; otherwise goes through sudo when present.
# The distribution's mosquitto service is never left listening on 1883: tests
# start their own broker, and a system one would only get in the way.
set -euo pipefail

readonly PACKAGES=(mosquitto mosquitto-clients kcat chromium)
readonly COMMANDS=(mosquitto mosquitto_pub mosquitto_sub kcat chromium)

log() { printf 'install-deps: %s\n' "$*"; }
warn() { printf 'install-deps: WARNING: %s\n' "$*" >&2; }
die() { printf 'install-deps: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<'EOF'
Usage: scripts/install-deps.sh [-h|--help]

Installs mosquitto, mosquitto-clients, kcat and chromium with apt-get
(Debian/Ubuntu) when any of the commands mosquitto, mosquitto_pub,
mosquitto_sub, kcat or chromium is missing, and makes sure the system
mosquitto service is not running.
Then installs the npm packages pinned in e2e/package-lock.json (wscat and
mqtt.js) with npm ci, unless e2e/node_modules already matches the lock file; Node.js and
npm come from apt-get when npm is missing. Java and Maven (for
scripts/kafka.sh) come from apt-get when java or mvn is missing.
EOF
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

# Commands that the system does not find on PATH. mosquitto lives in
# /usr/sbin, which is not on a normal user's PATH, so look there as well.
have_cmd() {
  command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]]
}

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
    # Fall back to an interactive sudo when it needs a password and we have
    # a terminal to ask on.
    if ! sudo -n true 2>/dev/null; then
      if [[ -t 0 ]]; then SUDO=(sudo); else
        warn "not root and 'sudo -n' is not allowed; privileged steps may fail"
      fi
    fi
  fi
fi

as_root() {
  if [[ ${#SUDO[@]} -eq 0 && "$(id -u)" -ne 0 ]]; then
    die "need root for: $* (run as root or install sudo)"
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive "$@"
}

# The npm tools the tests drive, pinned in e2e/package-lock.json. npm ci
# replaces node_modules wholesale, so it runs only when the lock file (or
# package.json) changed since the last install, recorded in a stamp file
# inside node_modules that npm ci itself removes.
NPM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/e2e"
readonly NPM_DIR
readonly NPM_BINS=(wscat)
# Files the tests load rather than run: mqtt.js's browser bundle.
readonly NPM_FILES=(mqtt/dist/mqtt.min.js)

install_npm_tools() {
  local lock="$NPM_DIR/package-lock.json"
  local stamp="$NPM_DIR/node_modules/.install-deps-lock.sha256"
  [[ -f "$lock" ]] || die "$lock is missing"
  if ! command -v npm >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 ||
      die "npm not found and no apt-get; install Node.js (18 or later) and npm"
    log "npm not found: installing nodejs and npm with apt-get"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends nodejs npm
  fi
  local sum ok=1 b
  sum="$(cat "$NPM_DIR/package.json" "$lock" | sha256sum | cut -d' ' -f1)"
  for b in "${NPM_BINS[@]}"; do
    [[ -x "$NPM_DIR/node_modules/.bin/$b" ]] || ok=0
  done
  for f in "${NPM_FILES[@]}"; do
    [[ -f "$NPM_DIR/node_modules/$f" ]] || ok=0
  done
  if [[ $ok -eq 1 && -f "$stamp" && "$(cat "$stamp")" == "$sum" ]]; then
    log "npm tools in e2e/ match package-lock.json; skipping npm ci"
    return 0
  fi
  log "installing the npm tools pinned in e2e/package-lock.json (npm ci)"
  (cd "$NPM_DIR" && npm ci --ignore-scripts --no-audit --no-fund) ||
    die "npm ci in $NPM_DIR failed"
  for b in "${NPM_BINS[@]}"; do
    [[ -x "$NPM_DIR/node_modules/.bin/$b" ]] || die "npm ci did not install $b"
  done
  for f in "${NPM_FILES[@]}"; do
    [[ -f "$NPM_DIR/node_modules/$f" ]] || die "npm ci did not install $f"
  done
  printf '%s\n' "$sum" >"$stamp"
  log "ok: wscat $("$NPM_DIR/node_modules/.bin/wscat" --version) -> $NPM_DIR/node_modules/.bin/wscat"
  log "ok: mqtt.js $(node -p 'require(process.argv[1]).version' "$NPM_DIR/node_modules/mqtt/package.json") -> $NPM_DIR/node_modules/mqtt/dist/mqtt.min.js"
}

# Java and Maven, which scripts/kafka.sh needs to fetch Apache Kafka from
# Maven Central and run it (make test-kafka). It checks for Java 17+ itself.
install_kafka_tools() {
  local need=()
  command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
  command -v mvn >/dev/null 2>&1 || need+=(maven)
  if [[ ${#need[@]} -eq 0 ]]; then
    log "ok: java -> $(command -v java), mvn -> $(command -v mvn)"
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "java or mvn not found and no apt-get; install Java 17+ and Maven for scripts/kafka.sh"
  log "installing ${need[*]} with apt-get (scripts/kafka.sh needs java and mvn)"
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${need[@]}"
}

# Stop and disable a system mosquitto service if one is running, so that
# port 1883 stays free for whatever the tests decide to start.
stop_system_mosquitto() {
  local stopped=0
  if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    if systemctl is-active --quiet mosquitto.service 2>/dev/null; then
      log "stopping systemd unit mosquitto.service"
      as_root systemctl stop mosquitto.service || warn "systemctl stop mosquitto failed"
      stopped=1
    fi
    if systemctl is-enabled --quiet mosquitto.service 2>/dev/null; then
      log "disabling systemd unit mosquitto.service"
      as_root systemctl disable mosquitto.service >/dev/null 2>&1 ||
        warn "systemctl disable mosquitto failed"
    fi
  fi
  if [[ -x /etc/init.d/mosquitto ]] && [[ -f /run/mosquitto/mosquitto.pid ]]; then
    log "stopping /etc/init.d/mosquitto"
    as_root /etc/init.d/mosquitto stop >/dev/null 2>&1 || true
    stopped=1
  fi
  # A daemon left over from a package postinst without an init system: only
  # the system instance (run from /usr/sbin with the packaged config) is
  # ours to stop; brokers started by tests or developers are left alone.
  local pid
  if command -v pgrep >/dev/null 2>&1; then
    for pid in $(pgrep -x mosquitto || true); do
      if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
        grep -q -- '-c /etc/mosquitto/mosquitto.conf'; then
        log "stopping system mosquitto daemon (pid $pid)"
        as_root kill "$pid" || true
        stopped=1
      fi
    done
  fi
  if [[ $stopped -eq 0 ]]; then
    log "system mosquitto service is not running"
  fi
}

missing=()
for c in "${COMMANDS[@]}"; do
  have_cmd "$c" || missing+=("$c")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  log "all of ${COMMANDS[*]} already present; skipping apt-get"
  stop_system_mosquitto
  install_npm_tools
  install_kafka_tools
  exit 0
fi

log "missing commands: ${missing[*]}"
command -v apt-get >/dev/null 2>&1 ||
  die "apt-get not found; install ${PACKAGES[*]} with your package manager"

log "running apt-get update"
as_root apt-get update -qq

# Keep only the packages this apt knows about; report the others.
to_install=()
for p in "${PACKAGES[@]}"; do
  candidate="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
  if [[ -z "$candidate" || "$candidate" == "(none)" ]]; then
    warn "package '$p' is not available from the configured apt sources"
    if [[ "$p" == kcat ]]; then
      # Older releases ship the same tool under its former name.
      alt="$(apt-cache policy kafkacat 2>/dev/null | awk '/Candidate:/ {print $2}')"
      if [[ -n "$alt" && "$alt" != "(none)" ]]; then
        log "using package 'kafkacat' $alt instead of kcat"
        to_install+=(kafkacat)
      else
        warn "no kcat/kafkacat package: kafka.sh will fall back to the Kafka CLI classes"
      fi
    fi
  else
    log "package $p: candidate $candidate"
    to_install+=("$p")
  fi
done

if [[ ${#to_install[@]} -eq 0 ]]; then
  die "none of ${PACKAGES[*]} can be installed from apt"
fi

# Tell invoke-rc.d not to start services while the packages are unpacked
# (exit code 101 = "action forbidden"). Only add the policy file if there is
# none already, and always remove the one we added.
policy=/usr/sbin/policy-rc.d
added_policy=0
cleanup_policy() {
  if [[ $added_policy -eq 1 ]]; then
    as_root rm -f "$policy" || warn "could not remove $policy"
  fi
}
trap cleanup_policy EXIT
if [[ ! -e "$policy" ]]; then
  log "installing temporary $policy to keep services from starting"
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
  as_root chmod 0755 "$policy"
  added_policy=1
fi

log "installing: ${to_install[*]}"
as_root apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${to_install[@]}"

cleanup_policy
added_policy=0
trap - EXIT

# kafkacat provides 'kafkacat' only; give it the modern name too.
if ! have_cmd kcat && command -v kafkacat >/dev/null 2>&1; then
  log "linking kcat -> $(command -v kafkacat)"
  as_root ln -sf "$(command -v kafkacat)" /usr/local/bin/kcat
fi

stop_system_mosquitto

still_missing=()
for c in "${COMMANDS[@]}"; do
  have_cmd "$c" || still_missing+=("$c")
done
if [[ ${#still_missing[@]} -gt 0 ]]; then
  warn "still missing after install: ${still_missing[*]}"
  exit 1
fi
for c in "${COMMANDS[@]}"; do
  if command -v "$c" >/dev/null 2>&1; then
    log "ok: $c -> $(command -v "$c")"
  else
    log "ok: $c -> /usr/sbin/$c"
  fi
done
install_npm_tools
install_kafka_tools
