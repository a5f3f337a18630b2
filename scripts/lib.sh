# Shared by scripts/run, scripts/test and scripts/bench: bring up what is missing on a
# Debian machine with the Rust toolchain. Every function is idempotent.
# shellcheck shell=bash

TANSU_VERSION=0.6.0
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

# PostgreSQL on 127.0.0.1:5432 with trust auth for local connections.
ensure_postgres() {
  if pg_ready; then return 0; fi
  if ! command -v pg_ctlcluster >/dev/null; then
    apt_install postgresql postgresql-client
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  [ -n "$version" ] || die "postgresql is installed but has no cluster"
  local hba=/etc/postgresql/$version/main/pg_hba.conf
  # A cluster this script installed uses password auth on TCP; development wants trust.
  if ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
    log "allowing trust auth on 127.0.0.1 in $hba"
    as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  fi
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do pg_ready && return 0; sleep 0.5; done
  die "PostgreSQL did not come up on 127.0.0.1:5432"
}

ensure_tansu() {
  if command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  log "installing tansu $TANSU_VERSION (a Kafka-protocol broker; about 9 minutes the first time)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features libsql --quiet
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

# start_tansu DATA_DIR PORT LOG_FILE: starts a broker in the background, prints its pid.
start_tansu() {
  mkdir -p "$1"
  local dir
  dir=$(cd "$1" && pwd)
  # An absolute path in tansu's sqlite URL needs four slashes: sqlite:////abs/path.
  tansu broker \
    --storage-engine "sqlite:///$dir/tansu.db" \
    --listener-url "tcp://127.0.0.1:$2" \
    --advertised-listener-url "tcp://127.0.0.1:$2" >"$3" 2>&1 &
  echo $!
  wait_for_port 127.0.0.1 "$2" 60 tansu
  index_tansu_headers "$dir/tansu.db"
}

# tansu 0.6.0's sqlite schema has no index on header(topition, offset_id): every fetched
# record's headers are found by scanning every header stored, so consuming a topic costs
# O(records²) and stalls beyond ~10k records with headers (ours carry six), long enough
# for consumer-group heartbeats to be missed. The index changes no behaviour.
index_tansu_headers() {
  command -v sqlite3 >/dev/null || apt_install sqlite3
  sqlite3 "$1" "CREATE INDEX IF NOT EXISTS header_topition_offset ON header (topition, offset_id)" \
    || die "could not index the broker's header table in $1"
}

# create_topics BROKER PARTITIONS TOPIC...: creates those that do not exist yet.
create_topics() {
  local broker=$1 partitions=$2; shift 2
  local existing
  existing=$(tansu topic list --broker "tcp://$broker" 2>/dev/null || true)
  for topic in "$@"; do
    if grep -qF -- "\"name\":\"$topic\"" <<<"$existing"; then continue; fi
    tansu topic create --broker "tcp://$broker" --partitions "$partitions" "$topic" >/dev/null \
      || die "could not create topic $topic"
    log "created topic $topic ($partitions partitions)"
  done
}
