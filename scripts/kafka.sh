#!/usr/bin/env bash
# Run a throwaway single-node Apache Kafka (KRaft, broker+controller in one
# JVM) on loopback for Tributary's integration tests.
#
# The broker and its runtime dependencies come from Maven Central through
# mvn (scripts/kafka-pom.xml) and are cached outside the repository in
#   ${TRIBUTARY_CACHE:-$HOME/.cache/tributary}/kafka-<version>/libs
# Run state (config, data, log, pid) lives in
#   ${TRIBUTARY_KAFKA_DIR:-/tmp/tributary-kafka}
# and is recreated on every fresh start.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly POM="$SCRIPT_DIR/kafka-pom.xml"

readonly KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
readonly CACHE_ROOT="${TRIBUTARY_CACHE:-${HOME:?HOME is not set}/.cache/tributary}"
readonly KAFKA_HOME="$CACHE_ROOT/kafka-$KAFKA_VERSION"
readonly LIBS="$KAFKA_HOME/libs"
readonly STAMP="$KAFKA_HOME/complete.txt"
readonly RUN_DIR="${TRIBUTARY_KAFKA_DIR:-/tmp/tributary-kafka}"
# The default ports lie below Linux's ephemeral range (32768-60999): a port
# inside it can be held at any moment by some outgoing connection's local
# end, which no "is it listening" check sees, and the broker's bind then
# fails. When the ports are not given, start also moves on to the next pair
# (+100) if the broker still fails to bind; the pair in use is kept in the
# run directory, and "bootstrap" prints it.
readonly DEFAULT_PORT=19092
readonly DEFAULT_CONTROLLER_PORT=19093
PORT="${KAFKA_PORT:-$DEFAULT_PORT}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$DEFAULT_CONTROLLER_PORT}"
if [[ -n "${KAFKA_PORT:-}" || -n "${KAFKA_CONTROLLER_PORT:-}" ]]; then
  readonly PORTS_GIVEN=1
else
  readonly PORTS_GIVEN=0
fi
readonly START_ATTEMPTS=5
readonly HOST=127.0.0.1
readonly START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
readonly STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
readonly HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"

readonly PID_FILE="$RUN_DIR/kafka.pid"
readonly LOG_FILE="$RUN_DIR/kafka.log"
readonly CONFIG_FILE="$RUN_DIR/server.properties"
readonly LOG4J_FILE="$RUN_DIR/log4j2.properties"
readonly MARKER="$RUN_DIR/.tributary-kafka"
readonly PORTS_FILE="$RUN_DIR/ports"
readonly LOCK_FILE="${RUN_DIR%/}.lock"

log() { printf 'kafka.sh: %s\n' "$*"; }
warn() { printf 'kafka.sh: WARNING: %s\n' "$*" >&2; }
die() { printf 'kafka.sh: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<EOF
Usage: scripts/kafka.sh COMMAND

Commands:
  start      fetch Kafka $KAFKA_VERSION if needed, start it, wait until ready
  stop       stop the broker and delete its run directory
  status     exit 0 if the broker is running (prints pid and address)
  pid        print only the running broker's pid (for tributary-bench --kafka-pid)
  bootstrap  print the bootstrap address (the running broker's, else
             $HOST:$PORT)
  fetch      only download the broker jars into the cache
  logs       print the tail of the broker log
  logs-problems  print the broker log's last 60 WARN and ERROR lines and
             broker fencings (make test-kafka shows them when it fails)
  pause      freeze the broker (SIGSTOP): Kafka unresponsive, data kept
  resume     unfreeze it (SIGCONT)

Environment (defaults in brackets):
  KAFKA_VERSION          Kafka release from Maven Central [4.3.1]
  KAFKA_PORT             PLAINTEXT listener port on $HOST [$DEFAULT_PORT; if
                         neither port is given and that pair is taken, the
                         next free pair +100, +200, ...]
  KAFKA_CONTROLLER_PORT  KRaft controller listener port [$DEFAULT_CONTROLLER_PORT]
  TRIBUTARY_CACHE        jar cache root [\$HOME/.cache/tributary]
  TRIBUTARY_KAFKA_DIR    run directory [/tmp/tributary-kafka]
  KAFKA_START_TIMEOUT    seconds to wait for readiness [120]
  KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL [30]
  KAFKA_HEAP_OPTS        JVM heap options [-Xms256m -Xmx512m]
  KAFKA_EXTRA_CONFIG     extra server.properties lines appended verbatim
  KAFKA_MVN_ARGS         extra mvn arguments, e.g. "-o" to stay offline
  KAFKA_PROBE            readiness probe: auto, kcat or java [auto]
EOF
}

# ---------------------------------------------------------------- helpers

# Runs "$@" while holding an exclusive lock on file $1 (if flock exists).
with_lock() {
  local lock="$1"
  shift
  if command -v flock >/dev/null 2>&1; then
    mkdir -p "$(dirname "$lock")"
    (
      flock -x 9
      "$@"
    ) 9>"$lock"
  else
    "$@"
  fi
}

port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

require_java() {
  command -v java >/dev/null 2>&1 || die "java not found (Kafka 4.x needs Java 17+)"
  local v
  v="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
  if [[ -n "$v" && "${v%%.*}" -lt 17 ]]; then
    die "java $v found; Kafka 4.x needs Java 17+"
  fi
}

# Prints the pid of the running broker, or fails. The pid must belong to a
# kafka.Kafka JVM started with this run directory's config, so a recycled pid
# never gets signalled.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(<"$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *kafka.Kafka*"$CONFIG_FILE"* ]] || return 1
  printf '%s\n' "$pid"
}

# use_running_ports makes PORT and CONTROLLER_PORT those of the broker
# running from this run directory, when the caller gave none. (A start
# that failed leaves its ports file behind; with no broker it is ignored.)
use_running_ports() {
  [[ "$PORTS_GIVEN" == 0 && -f "$PORTS_FILE" ]] || return 0
  running_pid >/dev/null || return 0
  local p c
  read -r p c <"$PORTS_FILE" || return 0
  if [[ "$p" =~ ^[0-9]+$ && "$c" =~ ^[0-9]+$ ]]; then
    PORT="$p"
    CONTROLLER_PORT="$c"
  fi
}

# A real metadata round trip against the PLAINTEXT listener: the broker must
# be registered with the controller and report itself as broker 1.
# KAFKA_PROBE=kcat|java forces one probe; the default uses kcat if present.
probe() {
  local how="${KAFKA_PROBE:-auto}"
  if [[ "$how" == auto ]]; then
    if command -v kcat >/dev/null 2>&1; then how=kcat; else how=java; fi
  fi
  if [[ "$how" == kcat ]]; then
    local out
    out="$(timeout 15 kcat -b "$HOST:$PORT" -L -m 5 2>/dev/null)" || return 1
    [[ "$out" == *"broker 1 at $HOST:$PORT"* ]]
  else
    local out
    out="$(timeout 60 java -Xmx128m -Dtributary.log.level=ERROR \
      -Dlog4j2.configurationFile="$LOG4J_FILE" -cp "$LIBS/*" \
      org.apache.kafka.tools.BrokerApiVersionsCommand \
      --bootstrap-server "$HOST:$PORT" 2>/dev/null)" || return 1
    [[ "$out" == *"(id: 1 "* ]]
  fi
}

# Removes the run directory, but only if it is one this script created.
remove_run_dir() {
  [[ -e "$RUN_DIR" ]] || return 0
  case "$RUN_DIR" in
    / | "" | "$HOME" | "$HOME/") die "refusing to remove run dir '$RUN_DIR'" ;;
  esac
  if [[ -f "$MARKER" ]] || [[ -z "$(ls -A "$RUN_DIR" 2>/dev/null)" ]]; then
    rm -rf "$RUN_DIR"
  else
    die "$RUN_DIR exists but was not created by kafka.sh; not removing it"
  fi
}

# Kafka's Uuid: 16 random bytes, URL-safe base64 without padding (22 chars).
# Kafka's own generator avoids ids starting with '-' (they look like CLI
# flags); do the same.
random_cluster_id() {
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" != -* && ${#id} -eq 22 ]] && break
  done
  printf '%s\n' "$id"
}

# ---------------------------------------------------------------- fetching

pom_sum() { sha256sum "$POM" | awk '{print $1}'; }

cache_complete() {
  [[ -f "$STAMP" && -d "$LIBS" ]] || return 1
  local want_sum have_sum jar
  want_sum="$(pom_sum)"
  have_sum="$(awk -F= '$1 == "pom-sha256" {print $2}' "$STAMP")"
  [[ "$want_sum" == "$have_sum" ]] || return 1
  [[ -f "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]] || return 1
  while IFS= read -r jar; do
    [[ -f "$LIBS/$jar" ]] || return 1
  done < <(awk -F= '$1 == "jar" {print $2}' "$STAMP")
}

do_fetch() {
  if cache_complete; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found; it is needed to fetch Kafka"
  [[ -f "$POM" ]] || die "missing $POM"
  log "fetching Kafka $KAFKA_VERSION and dependencies from Maven Central into $LIBS"
  local tmp="$KAFKA_HOME/libs.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  local -a extra=()
  if [[ -n "${KAFKA_MVN_ARGS:-}" ]]; then
    read -r -a extra <<<"$KAFKA_MVN_ARGS"
  fi
  local started=$SECONDS mvn_log="$KAFKA_HOME/mvn.log"
  log "(first fetch: ~45 MB of jars plus Maven plugins on a fresh ~/.m2; can take a few minutes)"
  if ! mvn -B -q "${extra[@]}" -f "$POM" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$tmp" -DoverWriteReleases=true >"$mvn_log" 2>&1; then
    cat "$mvn_log" >&2
    rm -rf "$tmp"
    die "mvn could not fetch Kafka $KAFKA_VERSION (output above, also in $mvn_log)"
  fi
  rm -f "$mvn_log"
  [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] ||
    { rm -rf "$tmp"; die "mvn finished but kafka_2.13-$KAFKA_VERSION.jar is missing"; }
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  {
    printf 'kafka-version=%s\n' "$KAFKA_VERSION"
    printf 'pom-sha256=%s\n' "$(pom_sum)"
    (cd "$LIBS" && for f in *.jar; do printf 'jar=%s\n' "$f"; done)
  } >"$STAMP.tmp"
  mv "$STAMP.tmp" "$STAMP"
  log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - started))s"
}

fetch() {
  mkdir -p "$KAFKA_HOME"
  with_lock "$KAFKA_HOME/fetch.lock" do_fetch
}

# ---------------------------------------------------------------- config

write_config() {
  cat >"$CONFIG_FILE" <<EOF
# Generated by scripts/kafka.sh: single-node KRaft test broker.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$RUN_DIR/data

num.partitions=1
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1

offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Tests freeze the broker (pause) for longer than the default 9 s broker
# lease. On resume the controller would fence its own broker, and every
# partition would lose its leader for a moment: requests of the next test
# would fail for reasons of their own.
broker.session.timeout.ms=60000

# Small machine: keep thread pools modest.
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
EOF
  if [[ -n "${KAFKA_EXTRA_CONFIG:-}" ]]; then
    printf '\n# From KAFKA_EXTRA_CONFIG\n%s\n' "$KAFKA_EXTRA_CONFIG" >>"$CONFIG_FILE"
  fi

  # Everything goes to stdout, which start() redirects to kafka.log.
  cat >"$LOG4J_FILE" <<'EOF'
status = warn
name = tributary-test-kafka
appender.out.type = Console
appender.out.name = STDOUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${sys:tributary.log.level:-INFO}
rootLogger.appenderRef.out.ref = STDOUT
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
}

# ---------------------------------------------------------------- commands

tail_log() {
  if [[ -f "$LOG_FILE" ]]; then
    printf -- '----- last lines of %s -----\n' "$LOG_FILE" >&2
    tail -n "${1:-60}" "$LOG_FILE" >&2
    printf -- '-----\n' >&2
  fi
}

# wait_ready returns once the broker answers, or once it exited because a
# port was taken after all, with BIND_FAILED=1 (start then tries the next
# pair); it dies on any other failure. With ours=1 (the caller started pid
# itself), a broker that is still not ready at the timeout is stopped before
# dying, so that no JVM is left behind holding the ports; a broker some
# earlier start left running is not this call's to kill.
BIND_FAILED=0
wait_ready() {
  local pid="$1" ours="${2:-0}" deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      if grep -q 'Address already in use' "$LOG_FILE" 2>/dev/null; then
        BIND_FAILED=1
        return 0
      fi
      tail_log
      die "Kafka exited during startup"
    fi
    if port_open "$PORT" && probe; then
      return 0
    fi
    sleep 1
  done
  tail_log
  if [[ "$ours" == 1 ]]; then
    log "Kafka (pid $pid) not ready within ${START_TIMEOUT}s; stopping it"
    kill_broker "$pid"
    die "Kafka did not become ready within ${START_TIMEOUT}s (stopped it; log: $LOG_FILE)"
  fi
  die "Kafka did not become ready within ${START_TIMEOUT}s (pid $pid still running; run '$0 stop' to clean up)"
}

# next_ports moves PORT and CONTROLLER_PORT to the next pair, saying why.
next_ports() {
  log "port $HOST:$PORT or $HOST:$CONTROLLER_PORT $1; trying $((PORT + 100))/$((CONTROLLER_PORT + 100))"
  PORT=$((PORT + 100))
  CONTROLLER_PORT=$((CONTROLLER_PORT + 100))
}

do_start() {
  local started=$SECONDS pid
  # Again under the lock: a start that held it may have moved ports.
  use_running_ports
  if pid="$(running_pid)"; then
    if probe; then
      log "Kafka already running (pid $pid) at $HOST:$PORT"
      return 0
    fi
    log "Kafka process $pid exists but is not ready yet; waiting"
    wait_ready "$pid"
    ((BIND_FAILED == 0)) || die "Kafka exited during startup: a port was already in use"
    log "Kafka ready (pid $pid) at $HOST:$PORT"
    return 0
  fi

  require_java
  fetch

  local attempt
  for ((attempt = 1; ; attempt++)); do
    if [[ "$PORTS_GIVEN" == 0 ]]; then
      while port_open "$PORT" || port_open "$CONTROLLER_PORT"; do
        next_ports "is taken"
      done
    else
      for p in "$PORT" "$CONTROLLER_PORT"; do
        if port_open "$p"; then
          die "port $HOST:$p is already in use by another process"
        fi
      done
    fi
    start_once
    ((BIND_FAILED == 0)) && break
    if [[ "$PORTS_GIVEN" == 1 || attempt -ge START_ATTEMPTS ]]; then
      tail_log
      die "Kafka exited during startup: $HOST:$PORT or $HOST:$CONTROLLER_PORT was already in use"
    fi
    next_ports "could not be bound (taken after all)"
  done
  local version
  version="$(grep -m1 -o 'Kafka version: [^ ]*' "$LOG_FILE" | awk '{print $3}' || true)"
  log "Kafka ${version:-$KAFKA_VERSION} ready at $HOST:$PORT (pid $(<"$PID_FILE")) after $((SECONDS - started))s"
}

# start_once formats fresh storage and starts the broker on PORT and
# CONTROLLER_PORT; BIND_FAILED=1 says the broker found a port taken.
start_once() {
  local pid
  # Fresh state on every start.
  remove_run_dir
  mkdir -p "$RUN_DIR/data"
  : >"$MARKER"
  printf '%s %s\n' "$PORT" "$CONTROLLER_PORT" >"$PORTS_FILE"
  write_config

  local cluster_id
  cluster_id="$(random_cluster_id)"
  log "formatting storage (cluster id $cluster_id)"
  if ! java -Xmx256m -Dtributary.log.level=WARN \
    -Dlog4j2.configurationFile="$LOG4J_FILE" -cp "$LIBS/*" \
    kafka.tools.StorageTool format --standalone \
    --cluster-id "$cluster_id" --config "$CONFIG_FILE" >>"$LOG_FILE" 2>&1; then
    tail_log 30
    die "kafka-storage format failed"
  fi

  log "starting Kafka $KAFKA_VERSION on $HOST:$PORT (controller $HOST:$CONTROLLER_PORT), log: $LOG_FILE"
  local -a jvm_opts
  read -r -a jvm_opts <<<"$HEAP_OPTS"
  jvm_opts+=(
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$LOG4J_FILE"
    -Dkafka.logs.dir="$RUN_DIR"
  )
  # New session so the broker survives the caller's shell / job control;
  # the inner shell records its own pid and then becomes the JVM. fd 9 (the
  # start/stop lock) is closed so the broker does not keep holding it.
  # shellcheck disable=SC2016 # expanded by the inner shell, on purpose
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" \
    java "${jvm_opts[@]}" -cp "$LIBS/*" kafka.Kafka "$CONFIG_FILE" \
    </dev/null >>"$LOG_FILE" 2>&1 9>&- &

  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "$PID_FILE" ]] && break
    sleep 0.1
  done
  [[ -s "$PID_FILE" ]] || die "Kafka did not record its pid in $PID_FILE"
  pid="$(<"$PID_FILE")"

  BIND_FAILED=0
  wait_ready "$pid" 1
}

# kill_broker stops the broker process pid: SIGTERM, then SIGKILL if it is
# still there after STOP_TIMEOUT. SIGCONT comes first: a broker frozen with
# pause (SIGSTOP) would not act on SIGTERM until resumed, and would only
# go at the SIGKILL, without its clean shutdown.
kill_broker() {
  local pid="$1"
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "Kafka did not exit within ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
}

do_stop() {
  local pid
  if pid="$(running_pid)"; then
    log "stopping Kafka (pid $pid)"
    kill_broker "$pid"
    log "Kafka stopped"
  else
    log "Kafka is not running"
  fi
  remove_run_dir
}

do_status() {
  local pid
  if pid="$(running_pid)" && port_open "$PORT"; then
    log "running (pid $pid) at $HOST:$PORT"
    return 0
  fi
  if [[ -n "${pid:-}" ]]; then
    log "process $pid exists but $HOST:$PORT is not accepting connections"
  else
    log "not running"
  fi
  return 1
}

# signal_broker sends a signal to the running broker; pause/resume let
# tests make Kafka unresponsive mid-stream without losing its data.
signal_broker() {
  local pid
  pid="$(running_pid)" || die "Kafka is not running"
  kill "-$1" "$pid"
  log "sent SIG$1 to Kafka (pid $pid)"
}

main() {
  use_running_ports
  case "${1:-}" in
    pause) signal_broker STOP ;;
    resume) signal_broker CONT ;;
    start) with_lock "$LOCK_FILE" do_start ;;
    stop) with_lock "$LOCK_FILE" do_stop ;;
    status) do_status ;;
    pid) running_pid || die "Kafka is not running" ;;
    bootstrap) printf '%s:%s\n' "$HOST" "$PORT" ;;
    fetch) fetch; log "Kafka $KAFKA_VERSION jars are in $LIBS" ;;
    logs) if [[ -f "$LOG_FILE" ]]; then tail -n 100 "$LOG_FILE"; else die "no log at $LOG_FILE"; fi ;;
    logs-problems)
      [[ -f "$LOG_FILE" ]] || die "no log at $LOG_FILE"
      grep -E '\] (WARN|ERROR) |Fencing broker' "$LOG_FILE" | tail -n 60 || true ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
