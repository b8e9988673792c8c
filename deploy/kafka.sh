#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, broker + controller in one JVM) on 127.0.0.1, from the jars
# that deploy/kafka/pom.xml resolves from Maven Central.
# Usage: kafka.sh install|start|stop|status|endpoint (see deploy/README.md)
set -euo pipefail
NAME=kafka
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

POM=$REPO/deploy/kafka/pom.xml
VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
[[ -n $VERSION ]] || die "no <kafka.version> in $POM"
LIBS=$CACHE/kafka/$VERSION/libs
MARKER=$LIBS/.complete
PORT=${KEYTURN_KAFKA_PORT:-9092}
CONTROLLER_PORT=$((PORT + 1))
DIR=$RUN/kafka
DATA=$DIR/data
BOOTSTRAP=${KEYTURN_KAFKA_BOOTSTRAP:-127.0.0.1:$PORT}
# The services create their topics; a typo in a topic name should fail, not invent a topic.
AUTO_CREATE_TOPICS=${KEYTURN_KAFKA_AUTO_CREATE_TOPICS:-false}
HEAP=${KEYTURN_KAFKA_HEAP:--Xmx512m -Xms256m}
VENV_PYTHON=$REPO/.venv/bin/python
# A class-data archive, written when a broker first exits cleanly, halves later start times.
CDS=${KEYTURN_KAFKA_CDS:-1}
CDS_DIR=$CACHE/kafka/$VERSION/cds
# Our broker's command line names its own config, so another broker is never taken for it.
MATCH="kafka.Kafka $DIR/server.properties"

require_java() {
  command -v java >/dev/null || die "java 17+ not found (Debian: apt-get install -y openjdk-17-jre-headless)"
}

# The marker holds the pom's digest: editing the pom (a version bump) re-resolves the jars.
pom_digest() { sha256sum "$POM" | cut -d' ' -f1; }

install() {
  with_cache_lock "kafka-$VERSION" resolve_jars
  [[ -n ${KEYTURN_KAFKA_WARMING:-} ]] || with_cache_lock "kafka-$VERSION-cds" warm_cds
}

# The class-data archive is written when a broker first exits cleanly. Without one, every broker
# of a fresh machine starts slowly and writes one as it stops: a stop that took 20 s on a busy CI
# host (killed, then 33 s to start again) in the middle of a fault drill. Here a broker of its own
# starts and stops once while installing, beside the other servers' installs, and every later
# broker starts from the archive.
warm_cds() {
  [[ $CDS == 1 && -z ${KEYTURN_KAFKA_BOOTSTRAP:-} && ! -s $(cds_archive) ]] || return 0
  require_java
  local run port self=${BASH_SOURCE[0]}
  run=$(mktemp -d "${TMPDIR:-/tmp}/keyturn-kafka-cds.XXXXXX")
  for port in $(shuf -i 20000-59000 -n 20); do
    ! port_open 127.0.0.1 "$port" && ! port_open 127.0.0.1 $((port + 1)) && break
  done
  say "writing the class-data archive (a broker started and stopped once)"
  if KEYTURN_KAFKA_WARMING=1 KEYTURN_RUN=$run KEYTURN_KAFKA_PORT=$port "$self" start >/dev/null; then
    KEYTURN_KAFKA_WARMING=1 KEYTURN_RUN=$run KEYTURN_KAFKA_PORT=$port KEYTURN_STOP_TIMEOUT=120 "$self" stop >/dev/null || true
  fi
  rm -rf "$run"
  [[ -s $(cds_archive) ]] && say "class-data archive written" || warn "no class-data archive; brokers start without one"
}

resolve_jars() {
  if [[ -f $MARKER && $(<"$MARKER") == "$(pom_digest)" ]]; then
    say "Kafka $VERSION jars present in $LIBS"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (Debian: apt-get install -y maven)"
  require_java
  say "resolving Kafka $VERSION jars into $LIBS"
  local staging=$LIBS.partial.$$ log=$CACHE/kafka/$VERSION/mvn.log
  rm -rf "$staging"
  mkdir -p "$(dirname "$log")"
  mvn -q -B -f "$POM" -Dmaven.repo.local="$CACHE/m2" dependency:copy-dependencies \
    -DoutputDirectory="$staging" -DincludeScope=runtime >"$log" 2>&1 || {
    rm -rf "$staging"
    log_tail "$log"
    die "maven could not resolve $POM (is Maven Central reachable?)"
  }
  # Swap in whole: a broker already running keeps its open jars, new starts see a complete set.
  rm -rf "$LIBS.old"
  [[ ! -d $LIBS ]] || mv "$LIBS" "$LIBS.old"
  mv "$staging" "$LIBS"
  rm -rf "$LIBS.old" "$CDS_DIR"
  pom_digest >"$MARKER"
  say "resolved $(find "$LIBS" -name '*.jar' | wc -l) jars"
}

write_config() {
  mkdir -p "$DIR"
  cat >"$DIR/server.properties" <<EOF
# Written by deploy/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=$AUTO_CREATE_TOPICS
# Closed segments below a topic's log start offset (the submissions the intake took and deleted,
# in clear) are removed at this check, not before: every 30 s instead of every 5 minutes.
log.retention.check.interval.ms=30000
EOF
}

# The archive is only valid for one JVM build, so its name carries the java binary's identity.
cds_archive() {
  local java
  java=$(readlink -f "$(command -v java)")
  printf '%s/%s.jsa' "$CDS_DIR" "$(stat -c '%n %s %Y' "$java" | sha256sum | cut -c1-16)"
}

# JVM options: use the archive when there is one; else, for the broker (`cds_options create`),
# ask this run to write one when it exits.
cds_options() {
  [[ $CDS == 1 ]] || return 0
  local archive
  archive=$(cds_archive)
  if [[ -s $archive ]]; then
    printf '%s\0' "-XX:SharedArchiveFile=$archive" "-Xlog:cds*=error"
    return 0
  fi
  [[ ${1:-} == create ]] || return 0
  mkdir -p "$CDS_DIR"
  find "$CDS_DIR" -name '*.tmp-*' -mmin +60 -delete
  printf '%s\n' "$archive.tmp-$$" >"$DIR/cds.pending"
  printf '%s\0' "-XX:ArchiveClassesAtExit=$archive.tmp-$$" "-Xlog:cds*=error"
}

# After a clean exit the pending archive is complete: publish it under its final name.
publish_cds_archive() {
  [[ -f $DIR/cds.pending ]] || return 0
  local pending
  pending=$(<"$DIR/cds.pending")
  rm -f "$DIR/cds.pending"
  if [[ $STOP_FORCED == 1 ]]; then
    rm -f "$pending"
  elif [[ -s $pending ]]; then mv -f "$pending" "${pending%.tmp-*}"; fi
}

java_cmd() {
  local heap
  read -ra heap <<<"$HEAP"
  printf '%s\0' java "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$REPO/deploy/kafka/log4j2.properties" -Dkafka.logs.dir="$DIR" -Dlog4j2.shutdownHookEnabled=false \
    -cp "$LIBS/*" "$@"
}

# A random cluster id in Kafka's form: 16 bytes, URL-safe base64, no padding, no leading '-'.
cluster_id() {
  local id
  until [[ ${id:-} && $id != -* ]]; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  printf '%s\n' "$id"
}

format_storage() {
  [[ ! -f $DATA/meta.properties ]] || return 0
  local -a cmd cds
  mapfile -d '' cds < <(cds_options)
  mapfile -d '' cmd < <(java_cmd "${cds[@]}" kafka.tools.StorageTool format --standalone \
    -t "$(cluster_id)" -c "$DIR/server.properties")
  say "formatting storage in $DATA"
  "${cmd[@]}" >>"$DIR/kafka.out" 2>&1 || {
    log_tail "$DIR/kafka.out"
    die "storage format failed"
  }
}

# A real metadata round trip: the broker must list itself and answer a topic listing. Without
# the project's venv (or before its packages are installed) an open port has to do.
metadata_ok() {
  [[ -x $VENV_PYTHON ]] || return 0
  local rc=0
  "$VENV_PYTHON" - "$BOOTSTRAP" <<'EOF' >/dev/null 2>&1 || rc=$?
import asyncio, sys
try:
    from aiokafka.admin import AIOKafkaAdminClient
except ImportError:
    sys.exit(3)

async def probe(bootstrap):
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        if not cluster["brokers"]:
            raise SystemExit(1)
        await admin.list_topics()
    finally:
        await admin.close()

asyncio.run(asyncio.wait_for(probe(sys.argv[1]), 10))
EOF
  ((rc == 0 || rc == 3))
}

healthy() {
  local host=${BOOTSTRAP%%,*}
  port_open "${host%:*}" "${host##*:}" && metadata_ok
}

start() {
  if [[ -n ${KEYTURN_KAFKA_BOOTSTRAP:-} ]]; then
    healthy || die "external broker $BOOTSTRAP (KEYTURN_KAFKA_BOOTSTRAP) does not answer"
    say "using the external broker at $BOOTSTRAP (KEYTURN_KAFKA_BOOTSTRAP); nothing started"
    return 0
  fi
  take_lock
  local pid
  if pid=$(running_pid "$MATCH"); then
    BOOTSTRAP=$(<"$(endpoint_file)")
    healthy || die "running (pid $pid) at $BOOTSTRAP but not healthy; see $DIR/kafka.log"
    say "already running (pid $pid) at $BOOTSTRAP"
    return 0
  fi
  install
  require_java
  require_free_port "$PORT" KEYTURN_KAFKA_PORT
  require_free_port "$CONTROLLER_PORT" "KEYTURN_KAFKA_PORT (controller uses port+1)"
  write_config
  format_storage
  local -a cmd cds
  rm -f "$DIR/cds.pending"
  mapfile -d '' cds < <(cds_options create)
  mapfile -d '' cmd < <(java_cmd "${cds[@]}" kafka.Kafka "$DIR/server.properties")
  local started=$EPOCHREALTIME
  pid=$(spawn "$DIR/kafka.out" "${cmd[@]}")
  printf '%s\n' "$BOOTSTRAP" >"$(endpoint_file)"
  wait_healthy "$pid" healthy "$DIR/kafka.out" "$DIR/kafka.log"
  say "started (pid $pid) at $BOOTSTRAP in $(since "$started"); log $DIR/kafka.log"
}

stop() {
  if [[ -n ${KEYTURN_KAFKA_BOOTSTRAP:-} ]]; then
    say "using the external broker at $BOOTSTRAP (KEYTURN_KAFKA_BOOTSTRAP); nothing to stop"
    return 0
  fi
  stop_recorded "$MATCH" TERM
  publish_cds_archive
}

status() {
  if [[ -n ${KEYTURN_KAFKA_BOOTSTRAP:-} ]]; then
    healthy || {
      say "external broker $BOOTSTRAP not answering"
      return 1
    }
    say "external broker at $BOOTSTRAP"
    return 0
  fi
  status_recorded "$MATCH" healthy BOOTSTRAP
}

endpoint() {
  if [[ -n ${KEYTURN_KAFKA_BOOTSTRAP:-} ]]; then
    printf '%s\n' "$BOOTSTRAP"
    return 0
  fi
  endpoint_recorded "$MATCH"
}

dispatch "$@"
