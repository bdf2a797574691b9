#!/usr/bin/env bash
# scripts/demo.sh — run the gateway against a private RabbitMQ node, with an
# example consumer printing every event, on a fresh Debian machine.
#
# Usage:
#   scripts/demo.sh                 # interactive: prints curl examples, runs until Ctrl-C
#   DEMO_SMOKE=1 scripts/demo.sh    # runs the examples itself, checks them, exits 0/1
#
# What it does:
#   1. Installs what is missing (apt-get, as root or through sudo):
#      rabbitmq-server, curl, and a C compiler for the build. Rust itself
#      (cargo) must already be installed, see https://rustup.rs.
#   2. Builds the gateway and examples/consumer.rs (release profile by default).
#   3. Boots a throwaway RabbitMQ node with scripts/broker.sh: its state lives
#      in .demo/run-PID/broker, it listens on a free port on 127.0.0.1 and
#      never touches a system RabbitMQ (port 5672 may be taken, it does not matter).
#   4. Starts the consumer (queue demo.users-events bound to users/user.#)
#      and waits for its "ready" line: the gateway answers 503 to writes that
#      no queue would receive, so the binding must exist first.
#   5. Starts the gateway with config/gateway.toml and waits for /readyz.
#   6. Interactive: prints URLs and ready-to-paste curl commands, shows the
#      gateway's and the consumer's output, prefixed, until Ctrl-C.
#      Smoke: sends the requests, checks the statuses and that the consumer
#      printed each accepted event (by message id), then exits.
#   On exit, whatever the reason, it stops the gateway, the consumer and the
#   broker node (the node also has a watchdog in case this script is killed
#   with SIGKILL). Logs of a failed run are kept in .demo/run-PID/.
#
# Environment:
#   GATEWAY_LISTEN        public listener (default 127.0.0.1:8080)
#   GATEWAY_ADMIN_LISTEN  admin listener  (default 127.0.0.1:9090)
#   DEMO_SMOKE=1          smoke test instead of waiting for Ctrl-C
#   DEMO_PROFILE          cargo profile: release (default) or debug (faster build)
#   DEMO_TIMEOUT          seconds to wait for each component to be ready (default 60)
#   CARGO_TARGET_DIR      honoured, as by cargo
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"

GATEWAY_LISTEN=${GATEWAY_LISTEN:-127.0.0.1:8080}
GATEWAY_ADMIN_LISTEN=${GATEWAY_ADMIN_LISTEN:-127.0.0.1:9090}
case ${DEMO_SMOKE:-0} in
0 | '' | false | no) SMOKE=0 ;;
*) SMOKE=1 ;;
esac
PROFILE=${DEMO_PROFILE:-release}
TIMEOUT=${DEMO_TIMEOUT:-60}
RUN_DIR=$ROOT/.demo/run-$$
BROKER_DIR=$RUN_DIR/broker
GATEWAY_LOG=$RUN_DIR/gateway.log
CONSUMER_LOG=$RUN_DIR/consumer.log

# Colours only on a terminal.
if [[ -t 1 ]]; then
    B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' D=$'\e[2m' N=$'\e[0m'
else
    B='' G='' R='' D='' N=''
fi
say() { printf '%s==>%s %s\n' "$B" "$N" "$*"; }
die() {
    printf '%sdemo: error:%s %s\n' "$R" "$N" "$*" >&2
    exit 1
}
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------- addresses

# "host:port" / "[v6]:port" -> ADDR_URL (http://host:port to connect to) and
# ADDR_PORT. A wildcard listen address is reached through loopback.
split_addr() {
    local var=$1 addr=${!1} host port
    port=${addr##*:}
    host=${addr%:*}
    host=${host#[}
    host=${host%]}
    case $host in
    0.0.0.0 | '') host=127.0.0.1 ;;
    ::) host=::1 ;;
    esac
    [[ $addr == *:* && $port =~ ^[0-9]+$ ]] || die "cannot parse $var='$addr' (expected HOST:PORT)"
    [[ $host == *:* ]] && host="[$host]"
    ADDR_URL=http://$host:$port
    ADDR_PORT=$port
}
split_addr GATEWAY_LISTEN
BASE=$ADDR_URL PUB_PORT=$ADDR_PORT
split_addr GATEWAY_ADMIN_LISTEN
ADMIN=$ADDR_URL ADM_PORT=$ADDR_PORT

# True when a TCP socket listens on port $1 (any address, v4 or v6).
listening() {
    local hex
    hex=$(printf ':%04X' "$1")
    # Columns: sl local_address rem_address st ...; st 0A = LISTEN.
    awk -v p="$hex" 'NR > 1 && substr($2, length($2) - 4) == p && $4 == "0A" { f = 1 } END { exit !f }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

check_ports() {
    local what var port
    for what in public admin; do
        if [[ $what == public ]]; then var=GATEWAY_LISTEN port=$PUB_PORT; else var=GATEWAY_ADMIN_LISTEN port=$ADM_PORT; fi
        if listening "$port"; then
            die "port $port ($var=${!var}) is already in use.
    Pick free ports, e.g.:
      GATEWAY_LISTEN=127.0.0.1:$((PUB_PORT + 1)) GATEWAY_ADMIN_LISTEN=127.0.0.1:$((ADM_PORT + 1)) scripts/demo.sh"
        fi
    done
    [[ $PUB_PORT != "$ADM_PORT" ]] || die "GATEWAY_LISTEN and GATEWAY_ADMIN_LISTEN use the same port $PUB_PORT"
}

# -------------------------------------------------------------- prerequisites

install_missing() {
    local pkgs=()
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || pkgs+=(rabbitmq-server)
    command -v curl >/dev/null || pkgs+=(curl)
    command -v cc >/dev/null || pkgs+=(gcc libc6-dev) # linker, and C code of compression crates
    command -v setsid >/dev/null || pkgs+=(util-linux)
    ((${#pkgs[@]})) || return 0
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "missing packages: ${pkgs[*]}; install them as root: apt-get install -y ${pkgs[*]}"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null || die "missing packages: ${pkgs[*]} (and no apt-get: this script expects Debian/Ubuntu)"
    say "installing ${pkgs[*]} (apt-get)"
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"
    if [[ " ${pkgs[*]} " == *" rabbitmq-server "* ]]; then
        say "note: the package may have started a system RabbitMQ service; the demo does not use it"
    fi
}

# ---------------------------------------------------------------- processes

GATEWAY_PID='' CONSUMER_PID='' VIEW_PIDS=() BROKER_STARTED=0

# True when process $1 exists and is not a zombie (a child that exited stays a
# zombie, and passes `kill -0`, until we reap it).
alive() {
    [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Waits up to $2 seconds for process $1 to exit by itself, then terminates it.
reap() {
    local pid=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    terminate "$pid" 2
}

# TERM, wait up to $2 seconds, then KILL; reaps our own child.
terminate() {
    local pid=$1 secs=$2 i
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        printf 'demo: pid %s did not stop within %ss, killing it\n' "$pid" "$secs" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? clean=0
    trap - EXIT INT TERM
    set +e
    # Ctrl-C (130) and SIGTERM (143) are the normal way to stop the demo.
    ((rc == 0 || rc == 130 || rc == 143)) && clean=1
    ((clean)) || [[ -z $GATEWAY_PID$CONSUMER_PID ]] || show_logs
    [[ -n $GATEWAY_PID || $BROKER_STARTED == 1 ]] && say "stopping (gateway, consumer, broker)"
    # Gateway first (it drains in-flight requests), then the consumer, so it
    # can still print what the gateway published last.
    [[ -n $GATEWAY_PID ]] && terminate "$GATEWAY_PID" 35
    [[ -n $CONSUMER_PID ]] && terminate "$CONSUMER_PID" 10
    local pid
    # The viewers (tail --pid) end on their own once their process is gone.
    for pid in "${VIEW_PIDS[@]}"; do reap "$pid" 3; done
    ((BROKER_STARTED)) && scripts/broker.sh stop "$BROKER_DIR" --remove
    if ((clean)); then
        rm -rf "$RUN_DIR"
        rmdir "$ROOT/.demo" 2>/dev/null
    elif [[ -d $RUN_DIR ]]; then
        printf 'demo: logs kept in %s\n' "$RUN_DIR" >&2
    fi
    exit "$rc"
}

show_logs() {
    local f
    for f in "$GATEWAY_LOG" "$CONSUMER_LOG"; do
        [[ -s $f ]] || continue
        printf -- '----- last lines of %s -----\n' "$f" >&2
        tail -n 25 "$f" | sed -e 's/\x1b\[[0-9;]*m//g' >&2
    done
}

# Shows a log file live, each line prefixed, until process $2 exits.
view() {
    local file=$1 pid=$2 prefix=$3 strip='s/\x1b\[[0-9;]*m//g'
    [[ -t 1 ]] && strip='s/^//' # keep the gateway's colours on a terminal
    tail -n +1 -F --pid="$pid" "$file" 2>/dev/null |
        sed -u -e "$strip" -e "s/^/$prefix /" &
    VIEW_PIDS+=($!)
}

# Polls "$@" every 100 ms until it succeeds; fails after $TIMEOUT s or when
# process $PID_TO_WATCH dies.
wait_until() {
    local what=$1 pid=$2
    shift 2
    local deadline=$(($(now_ms) + TIMEOUT * 1000))
    until "$@"; do
        alive "$pid" || die "$what exited before it was ready"
        (($(now_ms) < deadline)) || die "$what not ready within ${TIMEOUT}s (DEMO_TIMEOUT)"
        sleep 0.1
    done
}

consumer_ready() { grep -q '^consumer: ready' "$CONSUMER_LOG" 2>/dev/null; }
gateway_ready() { curl -fsS -o /dev/null --max-time 2 "$ADMIN/readyz" 2>/dev/null; }

# ---------------------------------------------------------------- main

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

check_ports
install_missing
command -v cargo >/dev/null || die "cargo not found; install Rust first: https://rustup.rs (then open a new shell)"

case $PROFILE in
release) profile_args=(--release) ;;
debug | dev) profile_args=() PROFILE=debug ;;
*) die "DEMO_PROFILE must be release or debug, not '$PROFILE'" ;;
esac
say "building the gateway and the example consumer (cargo build --$PROFILE; the first build takes a few minutes)"
cargo build "${profile_args[@]}" --bin amqp-gateway --example consumer
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GATEWAY_BIN=$TARGET_DIR/$PROFILE/amqp-gateway
CONSUMER_BIN=$TARGET_DIR/$PROFILE/examples/consumer
[[ -x $GATEWAY_BIN && -x $CONSUMER_BIN ]] || die "build did not produce $GATEWAY_BIN and $CONSUMER_BIN"
"$GATEWAY_BIN" check --config config/gateway.toml >/dev/null || die "config/gateway.toml is invalid (see above)"
check_ports # again: the build may have taken minutes

mkdir -p "$RUN_DIR"
say "starting a private RabbitMQ node (state in ${RUN_DIR#"$ROOT"/}/broker)"
BROKER_STARTED=1
broker_env=$(scripts/broker.sh start "$BROKER_DIR" --watch-pid $$) || die "the RabbitMQ node did not start (see above)"
eval "$broker_env"
AMQP_URL=$AMQP_TEST_URL

say "starting the example consumer"
"$CONSUMER_BIN" --url "$AMQP_URL" --exchange users --binding 'user.#' >"$CONSUMER_LOG" 2>&1 &
CONSUMER_PID=$!
view "$CONSUMER_LOG" "$CONSUMER_PID" "${G}[consumer]${N}"
wait_until "the consumer" "$CONSUMER_PID" consumer_ready

say "starting the gateway (config/gateway.toml, public $GATEWAY_LISTEN, admin $GATEWAY_ADMIN_LISTEN)"
AMQP_URL=$AMQP_URL GATEWAY_LISTEN=$GATEWAY_LISTEN GATEWAY_ADMIN_LISTEN=$GATEWAY_ADMIN_LISTEN \
    "$GATEWAY_BIN" --config config/gateway.toml >"$GATEWAY_LOG" 2>&1 &
GATEWAY_PID=$!
view "$GATEWAY_LOG" "$GATEWAY_PID" "${D}[gateway]${N}"
wait_until "the gateway" "$GATEWAY_PID" gateway_ready

JSON='Content-Type: application/json'
if ((SMOKE == 0)); then
    cat <<EOF

${B}amqp-gateway demo is up.${N}
  gateway      $BASE            (routes: config/gateway.toml)
  admin        $ADMIN/readyz  $ADMIN/healthz
  RabbitMQ     $AMQP_URL
  consumer     queue demo.users-events <- exchange users, binding user.#

Paste these in another terminal; the events appear below, prefixed [consumer]:

  # create -> 201 Created + Location: /users/<event_id>
  curl -i -X POST $BASE/users -H '$JSON' -d '{"name":"Ada Lovelace","email":"ada@example.com"}'

  # update -> 202 Accepted; the same Idempotency-Key always gives the same event_id (message_id)
  curl -i -X PUT $BASE/users/42 -H '$JSON' -H 'Idempotency-Key: 3f0c6a5e-demo' -d '{"name":"Ada King"}'

  # delete -> 202 Accepted (AMQP type UserDeleted, header x-schema-version)
  curl -i -X DELETE $BASE/users/42

  # a '.' in {id} would add a routing-key word (user.4.2.updated) -> 400, nothing published
  curl -i -X PUT $BASE/users/4.2 -H '$JSON' -d '{}'

  # readiness (200 once the publishing channels are up)
  curl -s $ADMIN/readyz

Ctrl-C stops everything (gateway, consumer, RabbitMQ node).

EOF
    wait "$GATEWAY_PID" || true
    die "the gateway exited unexpectedly"
fi

# ---------------------------------------------------------------- smoke test

say "smoke test: sending the example requests"
FAILURES=0
fail() {
    printf '%sFAIL%s %s\n' "$R" "$N" "$*"
    FAILURES=$((FAILURES + 1))
}
ok() { printf '%sok%s   %s\n' "$G" "$N" "$*"; }

# request NAME EXPECTED_STATUS CURL_ARGS... ; sets STATUS, BODY, HEADERS, EVENT_ID
request() {
    local name=$1 expected=$2
    shift 2
    STATUS=$(curl -sS --max-time 10 -D "$RUN_DIR/headers" -o "$RUN_DIR/body" -w '%{http_code}' "$@") || STATUS=000
    BODY=$(cat "$RUN_DIR/body" 2>/dev/null || true)
    HEADERS=$(tr -d '\r' <"$RUN_DIR/headers" 2>/dev/null || true)
    EVENT_ID=$(sed -n 's/.*"event_id" *: *"\([^"]*\)".*/\1/p' <<<"$BODY")
    if [[ $STATUS == "$expected" ]]; then
        ok "$name -> $STATUS ${EVENT_ID:+event_id=$EVENT_ID}"
    else
        fail "$name -> $STATUS, expected $expected; body: $BODY"
    fi
}

ids=()
request "POST /users" 201 -X POST "$BASE/users" -H "$JSON" -d '{"name":"Ada Lovelace","email":"ada@example.com"}'
post_id=$EVENT_ID
location=$(sed -n 's/^[Ll]ocation: *//p' <<<"$HEADERS")
if [[ -z $post_id ]]; then
    fail "POST /users: no event_id in the body"
else
    ids+=("$post_id")
    if [[ $location == "/users/$post_id" ]]; then
        ok "Location: $location"
    else
        fail "POST /users: Location is '$location', expected /users/$post_id"
    fi
fi

request "PUT /users/42 (Idempotency-Key)" 202 -X PUT "$BASE/users/42" -H "$JSON" \
    -H 'Idempotency-Key: 3f0c6a5e-demo' -d '{"name":"Ada King"}'
put_id=$EVENT_ID
if [[ -n $put_id ]]; then ids+=("$put_id"); else fail "PUT /users/42: no event_id in the body"; fi
request "PUT /users/42 (same Idempotency-Key again)" 202 -X PUT "$BASE/users/42" -H "$JSON" \
    -H 'Idempotency-Key: 3f0c6a5e-demo' -d '{"name":"Ada King"}'
if [[ -n $put_id && $EVENT_ID == "$put_id" ]]; then
    ok "same Idempotency-Key -> same event_id"
else
    fail "same Idempotency-Key gave event_id '$EVENT_ID', first was '$put_id'"
fi

request "DELETE /users/42" 202 -X DELETE "$BASE/users/42"
if [[ -n $EVENT_ID ]]; then ids+=("$EVENT_ID"); else fail "DELETE /users/42: no event_id in the body"; fi

request "PUT /users/4.2 (routing-key injection)" 400 -X PUT "$BASE/users/4.2" -H "$JSON" -d '{}'

say "smoke test: waiting for the consumer to print the events"
deadline=$(($(now_ms) + 15000))
for id in "${ids[@]}"; do
    until grep -q "^  message_id *$id\$" "$CONSUMER_LOG"; do
        (($(now_ms) < deadline)) || break
        sleep 0.1
    done
    if grep -q "^  message_id *$id\$" "$CONSUMER_LOG"; then
        ok "consumer printed message_id $id"
    else
        fail "consumer did not print message_id $id within 15s"
    fi
done
if grep -q '^routing key *user\.4\.' "$CONSUMER_LOG"; then
    fail "an event for /users/4.2 was published"
fi

if ((FAILURES)); then
    die "smoke test: $FAILURES check(s) failed"
fi
say "${G}smoke test passed${N}"
