#!/usr/bin/env bash
# Kafka's own perf tools beside the benchmark's Kafka ceilings (BENCHMARKS.md,
# "Cross-check: Kafka's own perf tools"), on one broker of its own:
#   bench/kafka-perf/run.sh [RECORDS]
# 1. fetches kafka-tools' jars (pom.xml) into target/kafka-perf (once);
# 2. starts a broker on a free port and writes RECORDS (default 300000) records of
#    bench/kafka-connect/gen_records.py: the bodies alone for the producer tool, and the
#    records with ingest's key and headers, produced into a topic, for the consumer tool;
# 3. kafka-producer-perf-test (ProducerPerformance) with ingest's producer settings
#    (acks=all, idempotence, linger.ms=2, lz4), keys over as many values as there are
#    sessions, as fast as it can, twice (the first also warms the broker's JIT);
# 4. kafka-consumer-perf-test (ConsumerPerformance) reading the keyed records from
#    offset 0, three times, each in a fresh group;
# 5. with target/release/ipp-bench built (scripts/bench builds it), ipp-bench's ingest
#    and catch-up groups on the same broker: the raw producer and bare consumer ceilings
#    of the same run, printed last.
# Needs what scripts/bench needs (Java 17, Maven, PostgreSQL on 127.0.0.1:5432) and python3.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../../scripts/lib.sh"
here=$ROOT/bench/kafka-perf
work=$ROOT/target/kafka-perf
records=${1:-300000}
release=${CARGO_TARGET_DIR:-$ROOT/target}/release

ensure_postgres
ensure_kafka
mkdir -p "$work/logs"

# 1. kafka-tools and its dependencies (it pulls connect-runtime: a separate, heavier
# artifact than the broker's).
if [ ! -f "$work/libs/.complete" ]; then
  log "fetching kafka-tools $KAFKA_VERSION into $work/libs (once)"
  mvn -B -q -f "$here/pom.xml" -Dmaven.repo.local="$work/m2" \
    -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$work/libs"
  touch "$work/libs/.complete"
fi
tool() {
  java -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" \
    -Dipp.kafka.log.level=WARN -cp "$work/libs/*" "$@"
}

# 2. a broker of its own, the topics, the records
data=$(mktemp -d -t ipp-kafka-perf.XXXXXX)
port=$(free_port)
brokers=127.0.0.1:$port
cleanup() {
  stop_kafka "$KAFKA_PID"
  rm -rf "$data"
}
start_kafka "$data/kafka" "$port" "$work/logs/broker.log"
trap cleanup EXIT
log "broker: Apache Kafka $KAFKA_VERSION on $brokers; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for topic in perf.produce perf.records; do
  tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$brokers" --create \
    --topic "$topic" --partitions 8 --replication-factor 1 --config retention.ms=-1
done
python3 "$ROOT/bench/kafka-connect/gen_records.py" "$records" > "$data/records.txt"
cut -f3 "$data/records.txt" > "$data/bodies.txt"
sessions=$(cut -f2 "$data/records.txt" | sort -u | wc -l)
bytes=$(awk '{ n += length($0) } END { printf "%.0f", n / NR }' "$data/bodies.txt")
log "$records records of $sessions sessions, bodies of $bytes bytes on average"
tool org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$brokers" --topic perf.records \
  --reader-property parse.key=true --reader-property key.separator=$'\t' \
  --reader-property parse.headers=true --reader-property headers.delimiter=$'\t' \
  --reader-property headers.separator=',' --reader-property headers.key.separator='=' \
  --command-property acks=all --command-property linger.ms=5 < "$data/records.txt"

# 3. the producer tool: ProducerPerformance's last line is the whole run's summary.
for run in 1 2; do
  log "kafka-producer-perf-test, run $run/2: $records records, ingest's producer settings"
  tool org.apache.kafka.tools.ProducerPerformance --topic perf.produce \
    --num-records "$records" --payload-file "$data/bodies.txt" --throughput -1 \
    --key-distribution random --record-key-range "$sessions" \
    --producer-props "bootstrap.servers=$brokers" acks=all enable.idempotence=true \
    linger.ms=2 compression.type=lz4 | tail -n 1
done

# 4. the consumer tool, a fresh group each time (from offset 0).
for run in 1 2 3; do
  log "kafka-consumer-perf-test, run $run/3: $records records with ingest's key and headers"
  tool org.apache.kafka.tools.ConsumerPerformance --bootstrap-server "$brokers" \
    --topic perf.records --num-records "$records" --group "perf-$run-$(date +%s%N)" \
    --timeout 60000
done

# 5. the benchmark's own ceilings, on the same broker.
if [ -x "$release/ipp-bench" ]; then
  log "ipp-bench --only ingest,catchup on the same broker"
  KAFKA_BROKERS=$brokers BENCH_BROKER_PID=$KAFKA_PID \
    BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres} \
    "$release/ipp-bench" --bin-dir "$release" --only ingest,catchup --out "$work/bench"
else
  log "no $release/ipp-bench (scripts/bench builds it): the benchmark's ceilings skipped"
fi
