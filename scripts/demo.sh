#!/usr/bin/env bash
# scripts/demo.sh — run the gateway against a private RabbitMQ node, with an
# example backing service for reads and an example consumer printing every
# event, on a fresh Debian machine.
#
# Usage:
#   scripts/demo.sh                 # interactive: prints curl examples, runs until Ctrl-C
#   DEMO_SMOKE=1 scripts/demo.sh    # runs the examples itself, checks them, exits 0/1
#
# What it does:
#   1. Installs what is missing (apt-get, as root or through sudo):
#      rabbitmq-server, curl, and a C compiler for the build. Rust itself
#      (cargo) must already be installed, see https://rustup.rs.
#   2. Builds the gateway and the examples it uses (consumer, users_service,
#      mint_token). Debug profile by default:
#      it shares target/debug with `cargo run`/`cargo test` and its first
#      build is much shorter on a small machine; a demo does not need the
#      release profile's throughput (DEMO_PROFILE=release to use it).
#   3. Boots a throwaway RabbitMQ node with scripts/broker.sh: its state lives
#      in .demo/run-PID/broker, it listens on a free port on 127.0.0.1 and
#      never touches a system RabbitMQ (port 5672 may be taken, it does not matter).
#   4. Starts the consumer (queue demo.users-events bound to users/user.#)
#      and waits for its "ready" line: the gateway answers 503 to writes that
#      no queue would receive, so the binding must exist first.
#   5. Starts examples/users_service.rs (the `users` upstream of the read
#      routes, at $USERS_SERVICE_URL) and waits for its /healthz.
#   6. Starts the gateway with config/gateway.toml and waits for /readyz.
#   7. Interactive: prints URLs and ready-to-paste curl commands, shows the
#      gateway's and the consumer's output, prefixed, until Ctrl-C.
#      Smoke: sends the requests, checks the statuses and that the consumer
#      printed each accepted event (by message id), then exits.
#   On exit (success, failure, Ctrl-C, SIGTERM, closed terminal) it stops the
#   gateway, the backing service, the consumer and the broker node; detached
#   watchdogs do the same if this script is killed with SIGKILL. Logs of a
#   failed run are kept in .demo/run-PID/.
#
# Environment:
#   GATEWAY_LISTEN        public listener (default 127.0.0.1:8080)
#   GATEWAY_ADMIN_LISTEN  admin listener  (default 127.0.0.1:9090)
#   USERS_SERVICE_URL     where the example backing service listens, and the
#                         gateway looks for it (default http://127.0.0.1:9001)
#   JWT_SECRET            HS256 secret of the demo key (default: the demo config's)
#   DEMO_SMOKE=1          smoke test instead of waiting for Ctrl-C
#   DEMO_PROFILE          cargo profile: debug (default) or release
#   DEMO_TIMEOUT          seconds to wait for each component to be ready (default 60)
#   CARGO_TARGET_DIR      honoured, as by cargo
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"

GATEWAY_LISTEN=${GATEWAY_LISTEN:-127.0.0.1:8080}
GATEWAY_ADMIN_LISTEN=${GATEWAY_ADMIN_LISTEN:-127.0.0.1:9090}
USERS_SERVICE_URL=${USERS_SERVICE_URL:-http://127.0.0.1:9001}
case ${DEMO_SMOKE:-0} in
0 | '' | false | no) SMOKE=0 ;;
*) SMOKE=1 ;;
esac
PROFILE=${DEMO_PROFILE:-debug}
TIMEOUT=${DEMO_TIMEOUT:-60}
RUN_DIR=$ROOT/.demo/run-$$
BROKER_DIR=$RUN_DIR/broker
GATEWAY_LOG=$RUN_DIR/gateway.log
CONSUMER_LOG=$RUN_DIR/consumer.log
SERVICE_LOG=$RUN_DIR/users-service.log

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
[[ $USERS_SERVICE_URL =~ ^http://([^/]+)/?$ ]] ||
    die "USERS_SERVICE_URL must look like http://HOST:PORT, not '$USERS_SERVICE_URL'"
SERVICE_LISTEN=${BASH_REMATCH[1]}
split_addr SERVICE_LISTEN
SERVICE_PORT=$ADDR_PORT

# True when a TCP socket listens on port $1 (any address, v4 or v6).
listening() {
    local hex
    hex=$(printf ':%04X' "$1")
    # Columns: sl local_address rem_address st ...; st 0A = LISTEN.
    awk -v p="$hex" 'NR > 1 && substr($2, length($2) - 4) == p && $4 == "0A" { f = 1 } END { exit !f }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

check_ports() {
    local var port
    for var in GATEWAY_LISTEN GATEWAY_ADMIN_LISTEN USERS_SERVICE_URL; do
        case $var in
        GATEWAY_LISTEN) port=$PUB_PORT ;;
        GATEWAY_ADMIN_LISTEN) port=$ADM_PORT ;;
        USERS_SERVICE_URL) port=$SERVICE_PORT ;;
        esac
        if listening "$port"; then
            die "port $port ($var=${!var}) is already in use.
    Pick free ports, e.g.:
      GATEWAY_LISTEN=127.0.0.1:$((PUB_PORT + 1)) GATEWAY_ADMIN_LISTEN=127.0.0.1:$((ADM_PORT + 1)) USERS_SERVICE_URL=http://127.0.0.1:$((SERVICE_PORT + 1)) scripts/demo.sh"
        fi
    done
    [[ $(printf '%s\n' "$PUB_PORT" "$ADM_PORT" "$SERVICE_PORT" | sort -u | wc -l) == 3 ]] ||
        die "GATEWAY_LISTEN, GATEWAY_ADMIN_LISTEN and USERS_SERVICE_URL must use different ports"
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

GATEWAY_PID='' CONSUMER_PID='' SERVICE_PID='' VIEW_PIDS=() BROKER_STARTED=0 WATCHDOG_PID=''
PIDS_FILE=$RUN_DIR/pids

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
    trap - EXIT INT TERM HUP
    set +e
    [[ -n $WATCHDOG_PID ]] && kill "$WATCHDOG_PID" 2>/dev/null && wait "$WATCHDOG_PID" 2>/dev/null
    # Ctrl-C (130), SIGTERM (143) or a closed terminal (129) are the normal
    # ways to stop the demo.
    ((rc == 0 || rc == 129 || rc == 130 || rc == 143)) && clean=1
    ((clean)) || [[ -z $GATEWAY_PID$CONSUMER_PID$SERVICE_PID ]] || show_logs
    [[ -n $GATEWAY_PID || $BROKER_STARTED == 1 ]] && say "stopping (gateway, backing service, consumer, broker)"
    # Gateway first (it drains in-flight requests), then the consumer, so it
    # can still print what the gateway published last.
    [[ -n $GATEWAY_PID ]] && terminate "$GATEWAY_PID" 35
    [[ -n $SERVICE_PID ]] && terminate "$SERVICE_PID" 5
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
    for f in "$GATEWAY_LOG" "$SERVICE_LOG" "$CONSUMER_LOG"; do
        [[ -s $f ]] || continue
        printf -- '----- last lines of %s -----\n' "$f" >&2
        tail -n 25 "$f" | sed -e 's/\x1b\[[0-9;]*m//g' >&2
    done
}

# Detached watchdog: if this script dies without cleaning up (SIGKILL), it
# terminates the processes listed in $PIDS_FILE (PID and binary, checked
# against /proc so that a reused PID is left alone). The broker node has its
# own watchdog (broker.sh --watch-pid).
start_watchdog() {
    : >"$PIDS_FILE"
    # shellcheck disable=SC2016 # $1.. expand in the inner sh
    setsid sh -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done
        while read -r pid bin; do
            tr "\0" " " <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$bin" && kill -TERM "$pid"
        done <"$2"' demo-watchdog $$ "$PIDS_FILE" </dev/null >/dev/null 2>&1 &
    WATCHDOG_PID=$!
}
track() { printf '%s %s\n' "$1" "$2" >>"$PIDS_FILE"; }

# Shows a log file live, each line prefixed, until process $2 exits.
view() {
    local file=$1 pid=$2 prefix=$3 strip='s/\x1b\[[0-9;]*m//g'
    [[ -t 1 ]] && strip='s/^//' # keep the gateway's colours on a terminal
    tail -n +1 -F --pid="$pid" "$file" 2>/dev/null |
        sed -u -e "$strip" -e "s/^/$prefix /" &
    VIEW_PIDS+=($!)
}

# wait_until WHAT PID CMD...: polls CMD every 100 ms until it succeeds; fails
# after $TIMEOUT seconds, or as soon as process PID is gone.
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
service_ready() { curl -fsS -o /dev/null --max-time 2 "$USERS_SERVICE_URL/healthz" 2>/dev/null; }

# ---------------------------------------------------------------- main

# The Rust processes below are started with setsid, in their own session: a
# Ctrl-C in the terminal reaches only this script, which then stops them in
# order (the gateway drains first, the consumer prints what was published
# last). A background job of a non-interactive shell is not a process-group
# leader, so setsid execs in place and $! is the process itself.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

check_ports
install_missing
command -v cargo >/dev/null || die "cargo not found; install Rust first: https://rustup.rs (then open a new shell)"

case $PROFILE in
release) profile_args=(--release) ;;
debug | dev) profile_args=() PROFILE=debug ;;
*) die "DEMO_PROFILE must be release or debug, not '$PROFILE'" ;;
esac
say "building the gateway and the examples ($PROFILE profile; the first build takes a few minutes)"
cargo build "${profile_args[@]}" --bin amqp-gateway --example consumer --example users_service --example mint_token
TARGET_DIR=$(cd "${CARGO_TARGET_DIR:-$ROOT/target}" && pwd)
GATEWAY_BIN=$TARGET_DIR/$PROFILE/amqp-gateway
CONSUMER_BIN=$TARGET_DIR/$PROFILE/examples/consumer
SERVICE_BIN=$TARGET_DIR/$PROFILE/examples/users_service
MINT_BIN=$TARGET_DIR/$PROFILE/examples/mint_token
for bin in "$GATEWAY_BIN" "$CONSUMER_BIN" "$SERVICE_BIN" "$MINT_BIN"; do
    [[ -x $bin ]] || die "the build did not produce $bin"
done
"$GATEWAY_BIN" check --config config/gateway.toml >/dev/null || die "config/gateway.toml is invalid (see above)"
check_ports # again: the build may have taken minutes

mkdir -p "$RUN_DIR"
start_watchdog
say "starting a private RabbitMQ node (state in ${RUN_DIR#"$ROOT"/}/broker)"
BROKER_STARTED=1
broker_env=$(scripts/broker.sh start "$BROKER_DIR" --watch-pid $$) || die "the RabbitMQ node did not start (see above)"
eval "$broker_env"
AMQP_URL=$AMQP_TEST_URL

say "starting the example consumer"
setsid "$CONSUMER_BIN" --url "$AMQP_URL" --exchange users --binding 'user.#' --quorum >"$CONSUMER_LOG" 2>&1 &
CONSUMER_PID=$!
track "$CONSUMER_PID" "$CONSUMER_BIN"
view "$CONSUMER_LOG" "$CONSUMER_PID" "${G}[consumer]${N}"
wait_until "the consumer" "$CONSUMER_PID" consumer_ready

say "starting the example backing service (users upstream, $USERS_SERVICE_URL)"
setsid "$SERVICE_BIN" --listen "$SERVICE_LISTEN" >"$SERVICE_LOG" 2>&1 &
SERVICE_PID=$!
track "$SERVICE_PID" "$SERVICE_BIN"
wait_until "the backing service" "$SERVICE_PID" service_ready

say "starting the gateway (config/gateway.toml, public $GATEWAY_LISTEN, admin $GATEWAY_ADMIN_LISTEN)"
AMQP_URL=$AMQP_URL GATEWAY_LISTEN=$GATEWAY_LISTEN GATEWAY_ADMIN_LISTEN=$GATEWAY_ADMIN_LISTEN \
    USERS_SERVICE_URL=$USERS_SERVICE_URL setsid "$GATEWAY_BIN" --config config/gateway.toml >"$GATEWAY_LOG" 2>&1 &
GATEWAY_PID=$!
track "$GATEWAY_PID" "$GATEWAY_BIN"
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
  reads from   $USERS_SERVICE_URL (examples/users_service.rs)

Paste these in another terminal; the events appear below, prefixed [consumer]:

  # create -> 201 Created + Location: /users/<event_id>
  curl -i -X POST $BASE/users -H '$JSON' -d '{"name":"Ada Lovelace","email":"ada@example.com"}'

  # update -> 202 Accepted; the same Idempotency-Key always gives the same event_id (message_id)
  curl -i -X PUT $BASE/users/42 -H '$JSON' -H 'Idempotency-Key: 3f0c6a5e-demo' -d '{"name":"Ada King"}'

  # delete -> 202 Accepted (AMQP type UserDeleted, header x-schema-version)
  curl -i -X DELETE $BASE/users/42

  # a '.' in {id} would add a routing-key word (user.4.2.updated) -> 400, nothing published
  curl -i -X PUT $BASE/users/4.2 -H '$JSON' -d '{}'

  # a read, proxied to the backing service: MISS, then HIT from the cache; 304 with the ETag
  curl -si $BASE/users/42 | grep -i -E '^(HTTP|etag|x-cache|age)'
  curl -si $BASE/users/42 -H 'If-None-Match: "user-42-v1"' | head -n 1

  # a protected write (role admin): 401 without a token; with one, the event carries x-auth-sub
  curl -i -X POST $BASE/admin/users/42/ban -H '$JSON' -d '{"reason":"spam"}'
  TOKEN=\$($MINT_BIN --sub alice --roles admin --email alice@example.com)
  curl -i -X POST $BASE/admin/users/42/ban -H "Authorization: Bearer \$TOKEN" -H '$JSON' -d '{"reason":"spam"}'

  # a synchronous write (login), proxied to the backing service: its status, Set-Cookie and body
  curl -i -X POST $BASE/auth/login -H '$JSON' -d '{"username":"ada","password":"demo"}'

  # readiness (200 once the publishing channels are up)
  curl -s $ADMIN/readyz

Ctrl-C stops everything (gateway, backing service, consumer, RabbitMQ node).

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

request "POST /admin/users/42/ban without a token" 401 -X POST "$BASE/admin/users/42/ban" -H "$JSON" -d '{"reason":"spam"}'
if token=$("$MINT_BIN" --sub alice --roles admin --email alice@example.com); then
    request "POST /admin/users/42/ban with an admin token" 202 -X POST "$BASE/admin/users/42/ban" \
        -H "Authorization: Bearer $token" -H "$JSON" -d '{"reason":"spam"}'
    if [[ -n $EVENT_ID ]]; then ids+=("$EVENT_ID"); else fail "ban: no event_id in the body"; fi
else
    fail "mint_token failed"
fi

request "POST /auth/login (proxied)" 200 -X POST "$BASE/auth/login" -H "$JSON" -d '{"username":"ada","password":"demo"}'
if grep -qi '^set-cookie: session=demo-session-ada' <<<"$HEADERS" && [[ $BODY == *'"session":"demo-session-ada"'* ]]; then
    ok "login: Set-Cookie and body from the backing service"
else
    fail "login: expected the service's Set-Cookie and body; headers: $HEADERS body: $BODY"
fi
request "POST /auth/login with a wrong password (proxied)" 401 -X POST "$BASE/auth/login" -H "$JSON" -d '{"username":"ada","password":"nope"}'

x_cache() { sed -n 's/^[Xx]-[Cc]ache: *//p' <<<"$HEADERS"; }
request "GET /users/42 (first)" 200 "$BASE/users/42"
first_cache=$(x_cache)
request "GET /users/42 (again)" 200 "$BASE/users/42"
if [[ $(x_cache) == HIT ]]; then
    ok "x-cache: $first_cache, then HIT"
else
    fail "second GET /users/42: x-cache is '$(x_cache)', expected HIT"
fi
request "GET /users/42 with If-None-Match" 304 "$BASE/users/42" -H 'If-None-Match: "user-42-v1"'

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
if grep -q '^  x-auth-sub *alice$' "$CONSUMER_LOG"; then
    ok "the ban event carries x-auth-sub: alice"
else
    fail "the consumer printed no event with x-auth-sub: alice"
fi
if grep -q '^routing key *user\.4\.' "$CONSUMER_LOG"; then
    fail "an event for /users/4.2 was published"
fi

if ((FAILURES)); then
    die "smoke test: $FAILURES check(s) failed"
fi
say "${G}smoke test passed${N}"
