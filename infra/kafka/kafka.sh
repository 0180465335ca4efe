#!/usr/bin/env bash
# Local single-node Apache Kafka broker (KRaft, broker+controller in one JVM), no Docker.
#
#   infra/kafka/kafka.sh fetch    resolve the broker jars with Maven (once; cached)
#   infra/kafka/kafka.sh start    start in the background and wait until ready;
#                                 last stdout line is the bootstrap address
#   infra/kafka/kafka.sh stop     SIGTERM, wait up to 30 s, then SIGKILL
#   infra/kafka/kafka.sh status   exit 0 if running
#
# Environment:
#   SLUICEGATE_HOME                  default $HOME/.sluicegate
#   SLUICEGATE_KAFKA_PORT            PLAINTEXT port, default 9092 (127.0.0.1 only)
#   SLUICEGATE_KAFKA_CONTROLLER_PORT controller port, default 9093 (127.0.0.1 only)
#   SLUICEGATE_KAFKA_HEAP_OPTS       default "-Xmx1g -Xms256m" (each test run adds a few hundred partitions)
#   SLUICEGATE_KAFKA_START_TIMEOUT   seconds to wait for readiness, default 120
#   SLUICEGATE_KAFKA_DATA            data dir, default $SLUICEGATE_HOME/kafka/data; a second
#                                    instance needs its own (and its own two ports)
#   SLUICEGATE_KAFKA_SASL_USERS      unset (default): the client listener is PLAINTEXT.
#                                    "user:password,user2:password2": it is SASL_PLAINTEXT
#                                    instead, with PLAIN and SCRAM-SHA-256 for these users
#                                    (SCRAM credentials are written when the data dir is
#                                    formatted, i.e. on its first start only); the first user
#                                    is the broker's own. Names and passwords: [A-Za-z0-9._-].
#                                    infra/kafka/kafka-sasl.sh starts such a second broker.
#   JAVA_HOME                        optional; otherwise java from PATH
#
# Layout:
#   $SLUICEGATE_HOME/kafka/<version>/libs   jars (from infra/kafka/pom.xml), shared by instances
#   $SLUICEGATE_HOME/kafka/data             server.properties, cluster.id, kafka.pid,
#                                           server.log, kafka.out, format.log,
#                                           logs/ (log.dirs)
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
POM="$SCRIPT_DIR/pom.xml"
LOG4J_CONF="$SCRIPT_DIR/log4j2.xml"

KAFKA_VERSION="$(sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$POM" | head -n1)"
[[ -n "$KAFKA_VERSION" ]] || { echo "kafka.sh: cannot read kafka.version from $POM" >&2; exit 1; }

BASE="${SLUICEGATE_HOME:-$HOME/.sluicegate}/kafka"
LIBS="$BASE/$KAFKA_VERSION/libs"
DATA="${SLUICEGATE_KAFKA_DATA:-$BASE/data}"
PORT="${SLUICEGATE_KAFKA_PORT:-9092}"
CPORT="${SLUICEGATE_KAFKA_CONTROLLER_PORT:-9093}"
HOST=127.0.0.1
HEAP_OPTS="${SLUICEGATE_KAFKA_HEAP_OPTS:--Xmx1g -Xms256m}"
START_TIMEOUT="${SLUICEGATE_KAFKA_START_TIMEOUT:-120}"
SASL_USERS="${SLUICEGATE_KAFKA_SASL_USERS:-}"
SASL_MECHANISMS="PLAIN,SCRAM-SHA-256"
# The client listener's name is its security protocol (listener.security.protocol.map).
LISTENER=PLAINTEXT
if [[ -n "$SASL_USERS" ]]; then LISTENER=SASL_PLAINTEXT; fi
SASL_PAIRS=()  # "user:password", filled by parse_sasl_users

PID_FILE="$DATA/kafka.pid"
PROPS="$DATA/server.properties"
CLUSTER_ID_FILE="$DATA/cluster.id"
LOG_DIRS="$DATA/logs"
SERVER_LOG="$DATA/server.log"
STDOUT_LOG="$DATA/kafka.out"
FORMAT_LOG="$DATA/format.log"
LOCK_FILE="$BASE/.lock"

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
  JAVA="$JAVA_HOME/bin/java"
else
  JAVA="$(command -v java || true)"
fi

die() { echo "kafka.sh: $*" >&2; exit 1; }

# Serialise start/stop/fetch across processes (e.g. two pytest sessions).
# fd 9 is closed for the broker JVM so the lock is released when this script exits.
take_lock() {
  mkdir -p "$BASE"
  exec 9>"$LOCK_FILE"
  flock -w 300 9 || die "timed out waiting for $LOCK_FILE"
}

pom_stamp() { sha256sum "$POM" | cut -d' ' -f1; }

fetch() {
  local stamp="$LIBS/.complete"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$(pom_stamp)" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (needed once to resolve Kafka $KAFKA_VERSION jars)"
  local tmp="$BASE/$KAFKA_VERSION/libs.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  echo "kafka.sh: resolving Kafka $KAFKA_VERSION jars with Maven into $LIBS" >&2
  if ! mvn -q -B -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$tmp" >"$tmp.log" 2>&1; then
    tail -n 40 "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    die "mvn dependency:copy-dependencies failed"
  fi
  rm -f "$tmp.log"
  pom_stamp >"$tmp/.complete"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
}

classpath() {
  local cp="" jar
  for jar in "$LIBS"/*.jar; do cp="${cp:+$cp:}$jar"; done
  printf '%s' "$cp"
}

# Prints the pid if the pid file names a live broker JVM; cleans up a stale pid file.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
      && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'; then
    echo "$pid"
    return 0
  fi
  rm -f "$PID_FILE"
  return 1
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

write_props() {
  cat >"$PROPS" <<EOF
# Generated by infra/kafka/kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CPORT
listeners=$LISTENER://$HOST:$PORT,CONTROLLER://$HOST:$CPORT
advertised.listeners=$LISTENER://$HOST:$PORT
listener.security.protocol.map=$LISTENER:$LISTENER,CONTROLLER:PLAINTEXT
inter.broker.listener.name=$LISTENER
controller.listener.names=CONTROLLER
log.dirs=$LOG_DIRS
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
EOF
  [[ -z "$SASL_USERS" ]] || sasl_props >>"$PROPS"
}

# Fills SASL_PAIRS from SLUICEGATE_KAFKA_SASL_USERS (in this shell: die must end the script).
parse_sasl_users() {
  local pair
  local -a pairs
  IFS=',' read -r -a pairs <<<"$SASL_USERS"
  for pair in "${pairs[@]}"; do
    [[ "$pair" =~ ^[A-Za-z0-9._-]+:[A-Za-z0-9._-]+$ ]] \
      || die "SLUICEGATE_KAFKA_SASL_USERS: '$pair' is not user:password ([A-Za-z0-9._-])"
  done
  (( ${#pairs[@]} > 0 )) || die "SLUICEGATE_KAFKA_SASL_USERS names no user"
  SASL_PAIRS=("${pairs[@]}")
}

# The SASL_PLAINTEXT listener: PLAIN users from its JAAS line, SCRAM users from the metadata
# log (format_storage); the broker authenticates to itself as the first user, over PLAIN.
# No authorizer: an authenticated user may do anything, as on the PLAINTEXT broker.
sasl_props() {
  local pair plain_users=""
  local broker_user="${SASL_PAIRS[0]%%:*}" broker_pass="${SASL_PAIRS[0]#*:}"
  for pair in "${SASL_PAIRS[@]}"; do
    plain_users+=" user_${pair%%:*}=\"${pair#*:}\""
  done
  cat <<EOF
sasl.enabled.mechanisms=$SASL_MECHANISMS
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="$broker_user" password="$broker_pass"$plain_users;
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$broker_user" password="$broker_pass";
EOF
}

java_base() {
  [[ -n "$JAVA" ]] || die "java not found (need Java 17+; set JAVA_HOME)"
  printf '%s\0' "$JAVA" -cp "$(classpath)" \
    -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$DATA"
}

format_storage() {
  [[ -f "$LOG_DIRS/meta.properties" ]] && return 0
  local -a base
  mapfile -d '' base < <(java_base)
  if [[ ! -s "$CLUSTER_ID_FILE" ]]; then
    "${base[@]}" kafka.tools.StorageTool random-uuid 2>>"$FORMAT_LOG" | tail -n1 >"$CLUSTER_ID_FILE.tmp"
    [[ -s "$CLUSTER_ID_FILE.tmp" ]] || die "could not generate a cluster id (see $FORMAT_LOG)"
    mv "$CLUSTER_ID_FILE.tmp" "$CLUSTER_ID_FILE"
  fi
  local pair
  local -a scram=()
  for pair in "${SASL_PAIRS[@]}"; do
    scram+=(--add-scram "SCRAM-SHA-256=[name=${pair%%:*},password=${pair#*:}]")
  done
  if ! "${base[@]}" kafka.tools.StorageTool format -t "$(cat "$CLUSTER_ID_FILE")" \
        -c "$PROPS" "${scram[@]}" >>"$FORMAT_LOG" 2>&1; then
    tail -n 20 "$FORMAT_LOG" >&2
    die "kafka-storage format failed"
  fi
}

start() {
  take_lock
  local pid
  if pid="$(running_pid)"; then
    echo "kafka: already running (pid $pid)"
    echo "$HOST:$PORT"
    return 0
  fi
  local p
  for p in "$PORT" "$CPORT"; do
    port_open "$p" && die "port $HOST:$p is already in use by another process"
  done

  [[ -z "$SASL_USERS" ]] || parse_sasl_users
  fetch
  mkdir -p "$DATA" "$LOG_DIRS"
  write_props
  format_storage

  [[ -f "$SERVER_LOG" ]] && mv -f "$SERVER_LOG" "$SERVER_LOG.prev"
  [[ -f "$STDOUT_LOG" ]] && mv -f "$STDOUT_LOG" "$STDOUT_LOG.prev"

  local -a base
  mapfile -d '' base < <(java_base)
  local t0=$SECONDS
  # setsid: own session, so Ctrl-C in the caller's terminal/pytest does not reach it.
  # shellcheck disable=SC2086  # HEAP_OPTS is a list of JVM flags
  setsid nohup "${base[0]}" $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true "${base[@]:1}" \
    kafka.Kafka "$PROPS" </dev/null >"$STDOUT_LOG" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"

  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      echo "---- $SERVER_LOG (tail) ----" >&2; tail -n 30 "$SERVER_LOG" >&2 2>/dev/null || true
      echo "---- $STDOUT_LOG (tail) ----" >&2; tail -n 30 "$STDOUT_LOG" >&2 2>/dev/null || true
      die "broker exited during startup"
    fi
    if grep -q 'Kafka Server started' "$SERVER_LOG" 2>/dev/null && port_open "$PORT"; then
      break
    fi
    if (( SECONDS - t0 >= START_TIMEOUT )); then
      echo "---- $SERVER_LOG (tail) ----" >&2; tail -n 30 "$SERVER_LOG" >&2 2>/dev/null || true
      echo "---- $STDOUT_LOG (tail) ----" >&2; tail -n 30 "$STDOUT_LOG" >&2 2>/dev/null || true
      die "broker not ready after ${START_TIMEOUT}s (pid $pid left running; '$0 stop' to end it)"
    fi
    sleep 0.5
  done
  echo "kafka $KAFKA_VERSION: started (pid $pid) in $((SECONDS - t0))s"
  echo "$HOST:$PORT"
}

stop() {
  take_lock
  local pid
  if ! pid="$(running_pid)"; then
    echo "kafka: not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 60; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "kafka: pid $pid still alive after 30s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$PID_FILE"
  echo "kafka: stopped (pid $pid)"
}

status() {
  local pid
  if pid="$(running_pid)"; then
    echo "kafka: running (pid $pid) at $HOST:$PORT"
    return 0
  fi
  echo "kafka: not running"
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  fetch) take_lock; fetch; echo "kafka $KAFKA_VERSION: jars in $LIBS" ;;
  *) echo "usage: $0 {start|stop|status|fetch}" >&2; exit 2 ;;
esac
