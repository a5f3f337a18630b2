#!/usr/bin/env bash
# The peer beside the projector (BENCHMARKS.md, "A peer: Kafka Connect"): Kafka Connect
# (standalone) with the Debezium JDBC sink writing 100000 Kustom ipp.* records from an
# 8-partition topic into PostgreSQL, as the "Kafka to Postgres" a user would otherwise pick.
#   bench/kafka-connect/run.sh [RECORDS]
# 1. fetches the worker's jars (pom.xml) and the connector's plugin archive into
#    target/kafka-connect (once);
# 2. starts a broker of its own on a free port, creates the topic, produces
#    gen_records.py's records with ingest's key and headers;
# 3. attempt 1, schemaless JSON (JsonConverter, schemas.enable=false): prints the error
#    the sink stops with;
# 4. attempt 2, each body as one column (StringConverter + HoistField$Value): measures
#    the catch-up rate at the defaults and with larger batches;
# 5. stops everything and drops its database.
# Needs what scripts/bench needs (Java 17, Maven, PostgreSQL on 127.0.0.1:5432) and python3.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../../scripts/lib.sh"
here=$ROOT/bench/kafka-connect
work=$ROOT/target/kafka-connect
records=${1:-100000}

ensure_postgres
ensure_kafka
kafka_libs=$ROOT/.local/kafka/$KAFKA_VERSION/libs
mkdir -p "$work/logs"

# 1. the worker's jars, and the connector in a plugin directory of its own (Debezium's
# parent POM names Confluent's repository: settings.xml sends every repository to Central).
if [ ! -f "$work/libs/.complete" ]; then
  log "fetching Kafka Connect $KAFKA_VERSION into $work/libs (once)"
  mvn -B -q -s "$here/settings.xml" -f "$here/pom.xml" -Dmaven.repo.local="$work/m2" \
    -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$work/libs"
  touch "$work/libs/.complete"
fi
connector=io.debezium:debezium-connector-jdbc:3.6.0.Final
if [ ! -f "$work/plugins/debezium-connector-jdbc/debezium-connector-jdbc-3.6.0.Final.jar" ]; then
  log "fetching $connector (its plugin archive, every jar bundled) into $work/plugins (once)"
  mvn -B -q -s "$here/settings.xml" -Dmaven.repo.local="$work/m2" \
    org.apache.maven.plugins:maven-dependency-plugin:3.11.0:copy \
    -Dartifact="$connector:tar.gz:plugin" -DoutputDirectory="$work/dl"
  mkdir -p "$work/plugins"
  tar xzf "$work/dl/debezium-connector-jdbc-3.6.0.Final-plugin.tar.gz" -C "$work/plugins"
fi

# 2. a broker of its own, the topic, the records
data=$(mktemp -d -t ipp-connect.XXXXXX)
port=$(free_port)
database=ipp_connect_peer # as the sink properties name it
psql_() { psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q "$@"; }
connect_pid=
cleanup() {
  if [ -n "$connect_pid" ]; then kill "$connect_pid" 2>/dev/null || true; fi
  stop_kafka "$KAFKA_PID"
  psql_ -c "DROP DATABASE IF EXISTS $database" || true
  rm -rf "$data"
}
start_kafka "$data/kafka" "$port" "$work/logs/broker.log"
trap cleanup EXIT
tool() { java -Dipp.kafka.log.level=WARN -cp "$kafka_libs/*" "$@"; }
tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" --create \
  --topic ipp.events --partitions 8 --replication-factor 1 --config retention.ms=-1
log "producing $records records (ingest's key and headers)"
python3 "$here/gen_records.py" "$records" > "$data/records.txt"
tool org.apache.kafka.tools.ConsoleProducer --bootstrap-server "127.0.0.1:$port" --topic ipp.events \
  --reader-property parse.key=true --reader-property key.separator=$'\t' \
  --reader-property parse.headers=true --reader-property headers.delimiter=$'\t' \
  --reader-property headers.separator=',' --reader-property headers.key.separator='=' \
  --command-property acks=all --command-property linger.ms=5 < "$data/records.txt"

psql_ -c "DROP DATABASE IF EXISTS $database" -c "CREATE DATABASE $database"
psql_ -d "$database" -c 'CREATE TABLE connect_events (payload text)' \
  -c 'CREATE TABLE connect_events_jsonb (payload jsonb)'

# A worker's properties: CONVERTER for the values; offsets in a file of this run.
worker_properties() {
  local converter=$1 file=$data/worker-$2.properties
  cat > "$file" <<EOF
bootstrap.servers=127.0.0.1:$port
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=$converter
value.converter.schemas.enable=false
offset.storage.file.filename=$data/connect-$2.offsets
plugin.path=$work/plugins
listeners=http://127.0.0.1:$(free_port)
EOF
  echo "$file"
}

# Starts a standalone worker with SINK (a fresh connector name: a fresh group, offset 0).
start_connect() {
  local worker=$1 sink=$2 label=$3
  sed "s/^name=.*/name=$label-$(date +%s%N)/" "$here/$sink" > "$data/$label.properties"
  java -Xms512m -Xmx1g -Dlog4j2.configurationFile="$here/log4j2-connect.properties" \
    -cp "$work/libs/*" org.apache.kafka.connect.cli.ConnectStandalone \
    "$worker" "$data/$label.properties" > "$work/logs/connect-$label.log" 2>&1 &
  connect_pid=$!
}

stop_connect() {
  kill "$connect_pid" 2>/dev/null || true
  wait "$connect_pid" 2>/dev/null || true
  connect_pid=
}

# 3. attempt 1: schemaless JSON
log "attempt 1: JsonConverter with schemas.enable=false"
start_connect "$(worker_properties org.apache.kafka.connect.json.JsonConverter json)" \
  sink-json.properties json
for _ in $(seq 120); do
  grep -q 'Task threw an uncaught' "$work/logs/connect-json.log" && break
  sleep 0.5
done
grep -m1 -A1 'Failed to process record' "$work/logs/connect-json.log" \
  || echo "no task error seen: see $work/logs/connect-json.log"
stop_connect

# 4. attempt 2: the body as one column, measured from the worker's start and from the
# first row, polling count(*) every 200 ms.
string_worker=$(worker_properties org.apache.kafka.connect.storage.StringConverter string)
measure() {
  local sink=$1 table=$2 label=$3 started first='' rows=0 now deadline
  psql_ -d "$database" -c "TRUNCATE $table"
  started=$(date +%s.%N)
  start_connect "$string_worker" "$sink" "$label"
  deadline=$(( $(date +%s) + 180 ))
  while [ "$rows" -lt "$records" ]; do
    kill -0 "$connect_pid" 2>/dev/null || { echo "$label: the worker exited"; break; }
    [ "$(date +%s)" -lt "$deadline" ] || { echo "$label: timed out at $rows rows"; break; }
    sleep 0.2
    rows=$(psql_ -d "$database" -At -c "SELECT count(*) FROM $table")
    now=$(date +%s.%N)
    if [ -z "$first" ] && [ "$rows" -gt 0 ]; then first=$now; fi
  done
  stop_connect
  awk -v s="$started" -v f="${first:-$now}" -v e="$now" -v n="$rows" -v l="$label" \
    -v load="$(cut -d' ' -f1-3 /proc/loadavg)" 'BEGIN {
      printf "%s: %d rows, %.0f rows/s from the worker'"'"'s start (%.1f s), %.0f rows/s from the first row (%.1f s); load %s\n",
        l, n, n / (e - s), e - s, (e > f ? n / (e - f) : 0), e - f, load }'
}
log "attempt 2: StringConverter + HoistField\$Value, one column per body"
for run in 1 2 3; do measure sink-string.properties connect_events "defaults-$run"; done
for run in 1 2; do measure sink-string-batch4000.properties connect_events "batch4000-$run"; done
measure sink-string-batch4000-rewrite.properties connect_events batch4000-rewrite
measure sink-string-batch4000-tasks2.properties connect_events batch4000-tasks2
measure sink-jsonb.properties connect_events_jsonb jsonb-defaults
