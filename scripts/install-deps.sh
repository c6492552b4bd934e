#!/usr/bin/env bash
# Install the Debian packages Tributary's tests rely on:
#   mosquitto          MQTT broker started by integration tests (on its own port)
#   mosquitto-clients  mosquitto_pub / mosquitto_sub for manual and scripted checks
#   kcat               Kafka command-line client (optional: scripts/kafka.sh's
#                      readiness probe uses it when present, else Kafka's own
#                      Java tools; the docs' manual checks use it)
#   chromium           headless browser for the browser tests (chrome_test.go)
# and, with npm ci, the npm packages pinned in e2e/package-lock.json:
#   wscat              WebSocket client for the JSON WebSocket API smoke tests
#   mqtt               mqtt.js, whose browser bundle the browser tests load
# and, when missing:
#   gcc, libc6-dev     a C compiler and the C library headers: cgo, which
#                      go test -race and confluent-kafka-go (librdkafka) need
#   make               for the Makefile
#   default-jre-headless (or an openjdk-NN-jre-headless), maven
#                      Java 17+ and Maven, which scripts/kafka.sh needs for
#                      make test-kafka (an older java is replaced)
#
# Idempotent: when every needed command is already on PATH nothing is done,
# and npm ci is skipped while e2e/node_modules matches the lock file.
# apt-get waits up to APT_LOCK_TIMEOUT seconds (300) for the package lock
# that apt-daily or unattended-upgrades may hold on a fresh machine.
# Works non-interactively as root; otherwise goes through sudo when present.
# The distribution's mosquitto service is never left listening on 1883: tests
# start their own broker, and a system one would only get in the way.
set -euo pipefail

readonly PACKAGES=(mosquitto mosquitto-clients kcat chromium)
readonly COMMANDS=(mosquitto mosquitto_pub mosquitto_sub kcat chromium)
# Commands that may stay missing (with a warning) when no package has them.
readonly OPTIONAL_COMMANDS=(kcat)
readonly APT_LOCK_TIMEOUT="${APT_LOCK_TIMEOUT:-300}"

log() { printf 'install-deps: %s\n' "$*"; }
warn() { printf 'install-deps: WARNING: %s\n' "$*" >&2; }
die() { printf 'install-deps: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<'EOF'
Usage: scripts/install-deps.sh [-h|--help]

Installs mosquitto, mosquitto-clients, kcat and chromium with apt-get
(Debian/Ubuntu) when any of the commands mosquitto, mosquitto_pub,
mosquitto_sub, kcat or chromium is missing, and makes sure the system
mosquitto service is not running. kcat is optional: where no kcat or
kafkacat package exists, a warning says so (scripts/kafka.sh then probes
Kafka with its Java tools).
A C compiler (gcc, libc6-dev; cgo) and make come from apt-get when gcc
cannot build a C program or make is missing.
Then installs the npm packages pinned in e2e/package-lock.json (wscat and
mqtt.js) with npm ci, unless e2e/node_modules already matches the lock file; Node.js and
npm come from apt-get when npm is missing. Java 17+ and Maven (for
scripts/kafka.sh) come from apt-get when java is missing or older than 17,
or mvn is missing.

Environment:
  APT_LOCK_TIMEOUT  seconds apt-get waits for another apt/dpkg to finish [300]
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

# apt_get runs apt-get as root. On a fresh machine apt-daily or
# unattended-upgrades may hold dpkg's lock for minutes; without
# DPkg::Lock::Timeout apt-get fails at once instead of waiting.
apt_get() {
  as_root apt-get -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT" "$@"
}

# apt_update runs apt-get update, once per run. The timeout above is for
# dpkg's lock; apt-get update takes the package lists' lock, for which not
# every apt release waits, so a failure to get a lock is retried until
# APT_LOCK_TIMEOUT has passed.
APT_UPDATED=0
apt_update() {
  if [[ $APT_UPDATED -eq 1 ]]; then
    return 0
  fi
  local deadline=$((SECONDS + APT_LOCK_TIMEOUT)) err
  err="$(mktemp)"
  log "running apt-get update"
  until apt_get update -qq 2>"$err"; do
    if grep -qiE 'could not get lock|unable to lock|unable to acquire' "$err" &&
      ((SECONDS < deadline)); then
      log "another apt-get or dpkg holds apt's lock; retrying in 5s"
      sleep 5
      continue
    fi
    cat "$err" >&2
    rm -f "$err"
    die "apt-get update failed"
  done
  cat "$err" >&2
  rm -f "$err"
  APT_UPDATED=1
}

# apt_candidate prints the version apt would install for package $1, or
# nothing when the configured sources have none.
apt_candidate() {
  local v
  v="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')"
  if [[ -n "$v" && "$v" != "(none)" ]]; then
    printf '%s\n' "$v"
  fi
}

is_optional() {
  local c
  for c in "${OPTIONAL_COMMANDS[@]}"; do
    [[ "$c" == "$1" ]] && return 0
  done
  return 1
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
    apt_update
    apt_get install -y -qq --no-install-recommends nodejs npm
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

# c_toolchain_works says whether gcc compiles and links a C program: cgo
# needs the compiler and the C library's headers and start files.
c_toolchain_works() {
  command -v gcc >/dev/null 2>&1 || return 1
  local dir rc=0
  dir="$(mktemp -d)"
  printf '#include <stdio.h>\nint main(void) { return puts("ok") < 0; }\n' >"$dir/t.c"
  gcc "$dir/t.c" -o "$dir/t" >/dev/null 2>&1 || rc=1
  rm -rf "$dir"
  return $rc
}

# A C compiler, for cgo (go test -race, and confluent-kafka-go, which links
# librdkafka), and make, for the Makefile.
install_build_tools() {
  local need=()
  c_toolchain_works || need+=(gcc libc6-dev)
  command -v make >/dev/null 2>&1 || need+=(make)
  if [[ ${#need[@]} -gt 0 ]]; then
    command -v apt-get >/dev/null 2>&1 ||
      die "no working gcc or no make, and no apt-get; install a C compiler with the C library headers (cgo) and make"
    log "installing ${need[*]} with apt-get (cgo needs a C compiler; the Makefile needs make)"
    apt_update
    apt_get install -y -qq --no-install-recommends "${need[@]}"
    hash -r
    c_toolchain_works || die "gcc still cannot compile and link a C program after installing ${need[*]}"
    command -v make >/dev/null 2>&1 || die "make is still missing after installing it"
  fi
  log "ok: gcc -> $(command -v gcc), make -> $(command -v make)"
}

# java_major prints the major version of the java on PATH (8 for 1.8), or
# nothing when there is none or it does not say.
java_major() {
  command -v java >/dev/null 2>&1 || return 0
  local v
  v="$(java -XshowSettings:properties -version 2>&1 |
    awk -F'= ' '/java.specification.version/ {print $2; exit}')"
  v="${v#1.}"
  v="${v%%.*}"
  if [[ "$v" =~ ^[0-9]+$ ]]; then
    printf '%s\n' "$v"
  fi
}

# java_package prints the Debian package that brings Java 17 or later:
# default-jre-headless where the release's default is 17+ (its version is
# like 2:1.17-75), else the newest openjdk-NN-jre-headless apt has.
java_package() {
  local v n
  v="$(apt_candidate default-jre-headless)"
  n="${v#*:}"
  n="${n#1.}"
  n="${n%%[!0-9]*}"
  if [[ -n "$n" && "$n" -ge 17 ]]; then
    printf '%s\n' default-jre-headless
    return 0
  fi
  for n in 25 21 17; do
    if [[ -n "$(apt_candidate "openjdk-$n-jre-headless")" ]]; then
      printf '%s\n' "openjdk-$n-jre-headless"
      return 0
    fi
  done
  return 1
}

# Java 17+ and Maven, which scripts/kafka.sh needs to fetch Apache Kafka
# from Maven Central and run it (make test-kafka): Kafka 4.x does not run
# on older Java, so an older java counts as missing.
install_kafka_tools() {
  local need=() jv need_java=0
  jv="$(java_major)"
  if ! command -v java >/dev/null 2>&1; then
    need_java=1
  elif [[ -z "$jv" ]]; then
    warn "could not tell the version of $(command -v java); scripts/kafka.sh needs Java 17+"
  elif ((jv < 17)); then
    log "java $jv found ($(command -v java)); Kafka 4.x needs Java 17+"
    need_java=1
  fi
  command -v mvn >/dev/null 2>&1 || need+=(maven)
  if [[ $need_java -eq 0 && ${#need[@]} -eq 0 ]]; then
    log "ok: java ${jv:-?} -> $(command -v java), mvn -> $(command -v mvn)"
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "no Java 17+ or no mvn, and no apt-get; install Java 17+ and Maven for scripts/kafka.sh"
  if [[ ${#SUDO[@]} -eq 0 && "$(id -u)" -ne 0 ]]; then
    # make test runs this too, and needs neither: only make test-kafka does.
    warn "no Java 17+ or no mvn, and not root: make test-kafka needs them (as root: apt-get install default-jre-headless maven); make test does not"
    return 0
  fi
  apt_update
  if [[ $need_java -eq 1 ]]; then
    local pkg
    pkg="$(java_package)" ||
      die "apt has no Java 17+ package (default-jre-headless is $(apt_candidate default-jre-headless || true)); install Java 17+ for scripts/kafka.sh"
    need=("$pkg" "${need[@]}")
  fi
  log "installing ${need[*]} with apt-get (scripts/kafka.sh needs Java 17+ and mvn)"
  apt_get install -y -qq --no-install-recommends "${need[@]}"
  hash -r
  jv="$(java_major)"
  if [[ -z "$jv" ]] || ((jv < 17)); then
    die "java on PATH ($(command -v java || echo none)) is still ${jv:-of unknown version} after installing ${need[*]}: select Java 17+ (update-alternatives --config java) or put it first on PATH"
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn is still missing after installing ${need[*]}"
  log "ok: java $jv -> $(command -v java), mvn -> $(command -v mvn)"
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

# Commands to look for; kcat only when some package could bring it.
missing=()
for c in "${COMMANDS[@]}"; do
  have_cmd "$c" || missing+=("$c")
done
missing_required=()
for c in "${missing[@]}"; do
  is_optional "$c" || missing_required+=("$c")
done

# Only an optional command missing, and apt knows no package for it: no
# apt-get run (it would change nothing, on every run).
if [[ ${#missing[@]} -gt 0 && ${#missing_required[@]} -eq 0 ]] &&
  command -v apt-cache >/dev/null 2>&1 &&
  [[ -z "$(apt_candidate kcat)" && -z "$(apt_candidate kafkacat)" ]]; then
  warn "kcat not installed, and no kcat/kafkacat package in the configured apt sources: optional (scripts/kafka.sh probes Kafka with its Java tools instead)"
  missing=()
fi

if [[ ${#missing[@]} -eq 0 ]]; then
  if have_cmd kcat; then
    log "all of ${COMMANDS[*]} already present; skipping apt-get for them"
  else
    log "all of ${COMMANDS[*]} but the optional kcat already present; skipping apt-get for them"
  fi
  stop_system_mosquitto
  install_build_tools
  install_npm_tools
  install_kafka_tools
  exit 0
fi

log "missing commands: ${missing[*]}"
command -v apt-get >/dev/null 2>&1 ||
  die "apt-get not found; install ${PACKAGES[*]} with your package manager"

apt_update

# Keep only the packages this apt knows about; report the others.
to_install=()
for p in "${PACKAGES[@]}"; do
  candidate="$(apt_candidate "$p")"
  if [[ -z "$candidate" ]]; then
    warn "package '$p' is not available from the configured apt sources"
    if [[ "$p" == kcat ]]; then
      # Older releases ship the same tool under its former name.
      alt="$(apt_candidate kafkacat)"
      if [[ -n "$alt" ]]; then
        log "using package 'kafkacat' $alt instead of kcat"
        to_install+=(kafkacat)
      else
        warn "no kcat/kafkacat package: kcat is optional, scripts/kafka.sh will probe Kafka with its Java tools (the Kafka CLI classes)"
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
apt_get install -y -qq --no-install-recommends \
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
  if ! have_cmd "$c"; then
    if is_optional "$c"; then
      warn "$c is still missing: optional (scripts/kafka.sh probes Kafka with its Java tools instead)"
    else
      still_missing+=("$c")
    fi
  fi
done
if [[ ${#still_missing[@]} -gt 0 ]]; then
  warn "still missing after install: ${still_missing[*]}"
  exit 1
fi
for c in "${COMMANDS[@]}"; do
  if command -v "$c" >/dev/null 2>&1; then
    log "ok: $c -> $(command -v "$c")"
  elif [[ -x "/usr/sbin/$c" ]]; then
    log "ok: $c -> /usr/sbin/$c"
  fi
done
install_build_tools
install_npm_tools
install_kafka_tools
