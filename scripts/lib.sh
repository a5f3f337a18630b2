# Shared by scripts/run, scripts/test and scripts/bench: bring up what is missing on a
# Debian machine with the Rust toolchain. Every function is idempotent.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
}

# librdkafka is built from source by rdkafka-sys: it needs a C toolchain, OpenSSL and zlib.
ensure_build_deps() {
  command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
  apt_install build-essential pkg-config libssl-dev zlib1g-dev python3 curl
}

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
# Connects without a password, as every script and test does.
pg_trusts() { psql -w -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; }

# PostgreSQL on 127.0.0.1:5432 with trust auth for local connections.
ensure_postgres() {
  if pg_ready && pg_trusts; then return 0; fi
  if ! command -v pg_ctlcluster >/dev/null; then
    apt_install postgresql postgresql-client
  fi
  local version
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
  [ -n "$version" ] || die "postgresql is installed but has no cluster"
  local hba=/etc/postgresql/$version/main/pg_hba.conf
  # A cluster Debian's package made uses password auth on TCP; development wants trust.
  if ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
    log "allowing trust auth on 127.0.0.1 in $hba"
    as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  fi
  if pg_ready; then
    # Started before (by hand, or by the package) with the old rules: reload them.
    log "reloading PostgreSQL $version's authentication rules"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  else
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  for _ in $(seq 1 60); do pg_ready && pg_trusts && return 0; sleep 0.5; done
  die "PostgreSQL did not come up on 127.0.0.1:5432 with trust auth"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_for_port() { # host port seconds what
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$4 did not listen on $1:$2 within $3 s"
    sleep 0.2
  done
}

# stop_within SECONDS PID...: SIGTERM, then SIGKILL whatever still runs after SECONDS.
# Polls rather than `wait`s, so it also stops processes that are not this shell's children.
stop_within() {
  local seconds=$1; shift
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  local deadline=$((SECONDS + seconds))
  while [ $SECONDS -lt $deadline ]; do
    local alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 1 ] || return 0
    sleep 0.2
  done
  log "still running after ${seconds}s, killing: $*"
  kill -KILL "$@" 2>/dev/null || true
}

# --- Apache Kafka -------------------------------------------------------------------
# The broker is Apache Kafka itself, run from its Maven Central jars with `java` (no
# tarball, no Docker). scripts/kafka/pom.xml pins the version; the jars are fetched once
# into .local/kafka/<version>/libs and reused. scripts/kafka-broker runs one broker (one
# node of a cluster with --cluster).

KAFKA_POM=$ROOT/scripts/kafka/pom.xml
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM")
KAFKA_CACHE=$ROOT/.local/kafka
KAFKA_LIBS=$KAFKA_CACHE/$KAFKA_VERSION/libs

# Java 17 (Kafka 4 brokers need 17 or newer) and Maven, from Debian's packages if missing.
ensure_java() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  [ "${major:-0}" -ge 17 ] 2>/dev/null || die "Kafka $KAFKA_VERSION needs Java 17 or newer; java is ${major:-unknown}"
}

ensure_kafka() {
  ensure_java
  [ -f "$KAFKA_LIBS/.complete" ] && return 0
  command -v mvn >/dev/null || apt_install maven
  log "fetching Apache Kafka $KAFKA_VERSION from Maven Central into ${KAFKA_LIBS#"$ROOT"/} (once)"
  mkdir -p "$KAFKA_CACHE"
  local staging
  staging=$(mktemp -d "$KAFKA_CACHE/staging.XXXXXX")
  # A Maven repository of its own under .local: removing .local resets everything.
  if ! mvn -B -q -f "$KAFKA_POM" -Dmaven.repo.local="$KAFKA_CACHE/m2" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$staging/libs" \
      >"$staging/mvn.log" 2>&1; then
    tail -n 30 "$staging/mvn.log" >&2
    rm -rf "$staging"
    die "could not fetch Apache Kafka $KAFKA_VERSION with mvn"
  fi
  touch "$staging/libs/.complete"
  mkdir -p "$(dirname "$KAFKA_LIBS")"
  # Another process may have finished first: theirs is as good as ours.
  mv -T "$staging/libs" "$KAFKA_LIBS" 2>/dev/null || true
  rm -rf "$staging"
}

# kafka_tool MAIN_CLASS ARG...: one of Kafka's command-line tools, quietly.
kafka_tool() {
  local main=$1; shift
  java -Xshare:auto -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" -Dipp.kafka.log.level=WARN \
    -cp "$KAFKA_LIBS/*" "$main" "$@"
}

# start_kafka DATA_DIR PORT LOG_FILE [KEY=VALUE...]: starts a broker in the background
# (see scripts/kafka-broker) and sets KAFKA_PID; fails, with the broker's last log
# lines, if it does not listen on PORT within 60 s.
start_kafka() {
  local data=$1 port=$2 logfile=$3; shift 3
  ensure_kafka
  "$ROOT/scripts/kafka-broker" "$data" "$port" "$@" >"$logfile" 2>&1 &
  KAFKA_PID=$!
  local deadline=$((SECONDS + 60))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! kill -0 "$KAFKA_PID" 2>/dev/null || [ $SECONDS -ge "$deadline" ]; then
      tail -n 40 "$logfile" >&2
      stop_within 5 "$KAFKA_PID"
      die "Apache Kafka did not listen on 127.0.0.1:$port within 60 s (log: $logfile)"
    fi
    sleep 0.2
  done
}

# kafka_cluster_id: a new cluster id (16 random bytes, URL-safe base64 without padding).
kafka_cluster_id() {
  head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '='
}

# start_kafka_cluster DATA_DIR LOG_DIR PORT... : one node per PORT (node ids 1, 2, …), each
# broker and controller, the controllers a quorum of them all, topics at replication
# factor 3 with min.insync.replicas=2 (see scripts/kafka-broker --cluster), each with a
# 384 MiB heap. Sets KAFKA_PIDS and KAFKA_BROKERS (the bootstrap list); fails, with the
# last log lines, unless every node listens within 90 s. The data and controller ports
# are remembered in DATA_DIR/node-N: a second call restarts the same cluster.
start_kafka_cluster() {
  local data=$1 logs=$2; shift 2
  ensure_kafka
  mkdir -p "$data" "$logs"
  local cluster voters='' node=0 port
  if [ -f "$data/cluster" ]; then
    cluster=$(cat "$data/cluster") voters=$(cat "$data/voters")
  else
    cluster=$(kafka_cluster_id)
    for port in "$@"; do
      node=$((node + 1))
      voters=${voters:+$voters,}$node@127.0.0.1:$(free_port)
    done
    printf '%s\n' "$cluster" >"$data/cluster"
    printf '%s\n' "$voters" >"$data/voters"
  fi
  KAFKA_PIDS=() KAFKA_BROKERS='' node=0
  for port in "$@"; do
    node=$((node + 1))
    "$ROOT/scripts/kafka-broker" --heap 384m --cluster "$cluster" --node "$node" --voters "$voters" \
      "$data/node-$node" "$port" >>"$logs/kafka-$node.log" 2>&1 &
    KAFKA_PIDS+=($!)
    KAFKA_BROKERS=${KAFKA_BROKERS:+$KAFKA_BROKERS,}127.0.0.1:$port
  done
  local deadline=$((SECONDS + 90))
  node=0
  for port in "$@"; do
    node=$((node + 1))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
      if ! kill -0 "${KAFKA_PIDS[$((node - 1))]}" 2>/dev/null || [ $SECONDS -ge "$deadline" ]; then
        tail -n 40 "$logs/kafka-$node.log" >&2
        stop_within 5 "${KAFKA_PIDS[@]}"
        die "Kafka node $node did not listen on 127.0.0.1:$port within 90 s (log: $logs/kafka-$node.log)"
      fi
      sleep 0.2
    done
  done
}

# stop_kafka PID: a controlled shutdown, SIGKILL after 30 s.
stop_kafka() { stop_within 30 "$1"; }

# The settings the event log's topics need: nothing is ever deleted by age or size (a
# rebuild replays the whole history), and no compaction (it would keep one record per
# session key). Also in docker-compose.yml and the README.
TOPIC_CONFIGS=(--config retention.ms=-1 --config retention.bytes=-1 --config cleanup.policy=delete)

# create_topics BROKER PARTITIONS TOPIC...: creates those that do not exist yet.
create_topics() {
  local broker=$1 partitions=$2; shift 2
  local existing
  existing=$(kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$broker" --list) \
    || die "could not list the topics on $broker"
  for topic in "$@"; do
    if grep -qxF -- "$topic" <<<"$existing"; then continue; fi
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$broker" --create \
      --if-not-exists --topic "$topic" --partitions "$partitions" --replication-factor 1 \
      "${TOPIC_CONFIGS[@]}" >/dev/null || die "could not create topic $topic"
    log "created topic $topic ($partitions partitions, retention.ms=-1)"
  done
}

# --- Compile-time checked SQL -----------------------------------------------------
# sqlx_database: creates a fresh database holding every crate's migrations (projector
# 1001+, actions 2001+, ops 3001+, one shared `_sqlx_migrations`, each applied with
# --ignore-missing so it accepts the others' versions) and prints its URL. The
# `sqlx::query!` macros are checked against it by `cargo sqlx prepare`; drop it with
# drop_database.
sqlx_database() {
  local name=ipp_sqlx_$$_$RANDOM
  local url=postgres://postgres@127.0.0.1:5432/$name
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE \"$name\"" >/dev/null \
    || die "could not create database $name"
  local crate
  for crate in projector actions ops; do
    cargo sqlx migrate run --source "$ROOT/$crate/migrations" --ignore-missing \
      --database-url "$url" >/dev/null || die "could not apply $crate/migrations to $name"
  done
  printf '%s\n' "$url"
}

# drop_database URL: drops the database a URL names (one of ours, on 127.0.0.1).
drop_database() {
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS \"${1##*/}\"" >/dev/null
}
