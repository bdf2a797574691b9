#!/usr/bin/env bash
# scripts/broker.sh — start/stop a private, throwaway RabbitMQ node.
#
# The node never touches the system RabbitMQ (no /var/lib/rabbitmq,
# /var/log/rabbitmq, /etc/rabbitmq, port 5672, epmd 4369): every piece of
# state lives in DIR, and the node, its Erlang distribution port and its
# private epmd listen on 127.0.0.1 only, on free ports picked below 32768
# (outside the kernel's ephemeral range, so sockets bound to port 0 by the
# tests can never steal them between picking and binding).
#
# Usage:
#   scripts/broker.sh start DIR [--watch-pid PID] [--tls CERTDIR]
#       Boot a node whose state lives in DIR (created when missing; must not
#       already hold a node) and wait until it accepts AMQP connections
#       (deadline: $BROKER_BOOT_TIMEOUT seconds, default 60). On success,
#       prints `export VAR=...` lines on stdout, meant for `eval`:
#         AMQP_TEST_URL        amqp://guest:guest@127.0.0.1:PORT/%2f
#         AMQP_TEST_NODE       Erlang node name, for rabbitmqctl -n
#         AMQP_TEST_NODE_HOME  HOME holding the node's .erlang.cookie
#         AMQP_TEST_EPMD_PORT  the node's private epmd port (ERL_EPMD_PORT)
#         AMQP_TEST_BROKER_DIR DIR
#       and, with --tls:
#         AMQP_TEST_TLS_PORT   the amqps listener's port (127.0.0.1)
#         AMQP_TEST_TLS_URL    amqps://guest:guest@127.0.0.1:TLSPORT/%2f
#       With --tls CERTDIR, the node also gets an amqps listener on a free
#       loopback port, next to the plain one. CERTDIR must hold, in PEM:
#         ca.pem       the CA(s) that client certificates are checked against
#         server.pem   the node's certificate (chain)
#         server.key   its private key
#       They are copied into DIR/tls (the node never reads CERTDIR again).
#       Peers are verified when they present a certificate (verify_peer), but
#       need not present one (fail_if_no_peer_cert = false): plain TLS and
#       client-certificate clients both connect. `start` returns once the
#       amqps port accepts connections too (so does `up`).
#       Progress and errors go to stderr; on failure it prints the tail of
#       the node's logs, cleans up what it started, and exits non-zero.
#       With --watch-pid, a detached watchdog stops the node and removes DIR
#       once process PID is gone (covers owners that get SIGKILLed).
#   scripts/broker.sh stop DIR [--remove]
#       Stop the node, its private epmd and its watchdog. Idempotent. With
#       --remove, also delete DIR (otherwise logs are kept in DIR/log).
#   scripts/broker.sh down DIR [--kill]
#       Stop only the node's Erlang VM (gracefully: clients get
#       connection.close; with --kill: SIGKILL, sockets reset), keeping its
#       state, ports, epmd and watchdog. For fault tests.
#   scripts/broker.sh up DIR
#       Boot the VM of a node stopped with `down` again, on the same ports
#       and with the same data (durable queues and persistent messages
#       survive), and wait until it accepts AMQP connections.
#   scripts/broker.sh ctl DIR ARGS...
#       Run `rabbitmqctl -n NODE ARGS...` against the node in DIR.
#   scripts/broker.sh env DIR
#       Print the export lines of a running node again.
#   scripts/broker.sh logs DIR [LINES]
#       Print the tail of the node's logs (of every member's, for a cluster
#       DIR).
#
# Clusters (fault tests against several nodes; see tests/support/cluster.rs):
#   scripts/broker.sh cluster-start DIR N [--watch-pid PID]
#       Boot N (2-5) private nodes on loopback in DIR/n1..DIR/nN, sharing ONE
#       private epmd and ONE Erlang cookie, each with its own AMQP and
#       distribution port, joined into one cluster, and wait until
#       `cluster_status` lists all N running (deadline: $BROKER_BOOT_TIMEOUT
#       per node, plus the same again for the cluster). Nodes boot one after
#       the other: n1 first, then each next one joins the running ones by
#       classic-config peer discovery (every member's rabbitmq.conf lists all
#       N names); a node that still boots on its own is joined explicitly
#       (stop_app, join_cluster, start_app). The VMs run with CPU-light
#       scheduler flags (one scheduler, no busy-waiting): N nodes share a
#       small machine. Prints, for `eval`:
#         AMQP_CLUSTER_URLS      amqp://guest:guest@127.0.0.1:PORT/%2f per node,
#                                space-separated, n1 first
#         AMQP_CLUSTER_NODES     Erlang node names, space-separated, n1 first
#         AMQP_CLUSTER_DIRS      DIR/n1 ... DIR/nN, space-separated
#         AMQP_CLUSTER_HOME      DIR: HOME holding the shared .erlang.cookie
#         AMQP_CLUSTER_EPMD_PORT the shared epmd port (ERL_EPMD_PORT)
#         AMQP_CLUSTER_DIR       DIR
#       Each DIR/nK is an ordinary node DIR for `down DIR/nK [--kill]`,
#       `up DIR/nK`, `ctl DIR/nK ...`, `env DIR/nK` and `logs DIR/nK`; its
#       VM's OS pid is in DIR/nK/rabbit.pid (for SIGSTOP/SIGCONT). `up`
#       returns once the node has rejoined (the rabbit app runs). On failure
#       it prints every member's log tail, stops what it started and exits
#       non-zero. --watch-pid: as for `start` (the watchdog runs
#       `cluster-stop DIR --remove`).
#   scripts/broker.sh cluster-stop DIR [--remove]
#       SIGKILL every member VM (their state is throwaway), then stop the
#       shared epmd and the watchdog. Idempotent. With --remove, delete DIR.
#   scripts/broker.sh cluster-env DIR
#       Print the export lines of a cluster again.
#
# Cluster example:
#   dir=$(mktemp -d)
#   eval "$(scripts/broker.sh cluster-start "$dir" 3 --watch-pid $$)"
#   scripts/broker.sh down "$dir/n2" --kill; scripts/broker.sh up "$dir/n2"
#   scripts/broker.sh ctl "$dir/n1" cluster_status
#   scripts/broker.sh cluster-stop "$dir" --remove
#
# Environment (read by `start` only; the defaults give the plain test node):
#   BROKER_PLUGINS    plugins to enable, comma- or space-separated (default:
#                     none). With rabbitmq_management, the management HTTP
#                     API listens on 127.0.0.1:$BROKER_MGMT_PORT and
#                     `start`/`env` also print
#                       AMQP_TEST_MGMT_URL   http://127.0.0.1:PORT (guest/guest)
#                     Used by bench/run.sh.
#   BROKER_MGMT_PORT  the management listener's port (default: a free port
#                     picked like the others).
#
# Example:
#   dir=$(mktemp -d)
#   eval "$(scripts/broker.sh start "$dir" --watch-pid $$)"
#   trap 'scripts/broker.sh stop "$dir" --remove' EXIT
#
# Pitfalls handled here (see also tests/support/broker.rs):
#   * Debian's /usr/sbin/rabbitmq-* wrappers `su rabbitmq` when run as root,
#     which resets HOME (so the cookie becomes /var/lib/rabbitmq's), cd's to
#     /var/lib/rabbitmq and redirects the server's output into
#     /var/log/rabbitmq/startup_log. We call the real scripts in
#     /usr/lib/rabbitmq/bin directly, as the current user (root or not), with
#     HOME=DIR, where we put a fresh mode-400 .erlang.cookie.
#   * Any `erl -sname`, including every rabbitmqctl call, spawns a
#     never-exiting `epmd -daemon` on port 4369 if none is running. We run a
#     private epmd on our own port (ERL_EPMD_PORT) and kill it on stop.
#   * RABBITMQ_* variables from the caller's environment and
#     /etc/rabbitmq/rabbitmq-env.conf, rabbitmq.conf, advanced.config and
#     conf.d are all ignored: every path is pointed into DIR.
set -euo pipefail

RABBITMQ_BIN_DIR=${RABBITMQ_BIN_DIR:-/usr/lib/rabbitmq/bin}
BOOT_TIMEOUT=${BROKER_BOOT_TIMEOUT:-60}
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

log() { printf 'broker.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "$SELF" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

now_ms() { date +%s%3N; }

# True when some TCP socket (v4 or v6, any state) uses local or remote port $1.
port_in_use() {
    local hex
    hex=$(printf ':%04X ' "$1")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q -- "$hex"
}

# Picks a free port in [20000, 32000) not in the list given as arguments.
pick_port() {
    local p i t taken
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        taken=0
        for t in "$@"; do [[ $t == "$p" ]] && taken=1; done
        ((taken)) && continue
        port_in_use "$p" && continue
        echo "$p"
        return 0
    done
    die "could not find a free TCP port"
}

# True when process $1 exists and is not a zombie (our detached children are
# reparented to PID 1, which may reap them late).
alive() {
    [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null || return 1
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Loads DIR/broker.env (written by `start`) into the current shell.
load_env() {
    local dir=$1
    [[ -f $dir/broker.env ]] || return 1
    # Only cluster members' broker.env set these.
    unset B_CLUSTER_DIR B_ERL_ARGS
    # shellcheck disable=SC1091
    . "$dir/broker.env"
}

# Exports the environment every rabbitmq script (server or ctl) needs to
# find the private node, and nothing from the caller's RABBITMQ_* settings.
node_env() {
    local v
    for v in $(compgen -e | grep '^RABBITMQ_' || true); do unset "$v"; done
    export HOME=$B_DIR
    export ERL_EPMD_PORT=$B_EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_CONF_ENV_FILE=$B_DIR/rabbitmq-env.conf
    export RABBITMQ_NODENAME=$B_NODE
}

ctl() {
    (
        node_env
        cd "$B_DIR"
        exec "$RABBITMQ_BIN_DIR/rabbitmqctl" -n "$B_NODE" "$@"
    )
}

print_exports() {
    printf 'export AMQP_TEST_URL=%q\n' "amqp://guest:guest@127.0.0.1:$B_NODE_PORT/%2f"
    printf 'export AMQP_TEST_NODE=%q\n' "$B_NODE"
    printf 'export AMQP_TEST_NODE_HOME=%q\n' "$B_DIR"
    printf 'export AMQP_TEST_EPMD_PORT=%q\n' "$B_EPMD_PORT"
    printf 'export AMQP_TEST_BROKER_DIR=%q\n' "$B_DIR"
    if [[ -n ${B_MGMT_PORT:-} ]]; then
        printf 'export AMQP_TEST_MGMT_URL=%q\n' "http://127.0.0.1:$B_MGMT_PORT"
    fi
    if [[ -n ${B_TLS_PORT:-} ]]; then
        printf 'export AMQP_TEST_TLS_PORT=%q\n' "$B_TLS_PORT"
        printf 'export AMQP_TEST_TLS_URL=%q\n' "amqps://guest:guest@127.0.0.1:$B_TLS_PORT/%2f"
    fi
}

show_logs() {
    local dir=$1 lines=${2:-40} f
    for f in "$dir"/server.out "$dir"/wait.out "$dir"/epmd.out "$dir"/log/*.log; do
        [[ -s $f ]] || continue
        printf -- '----- tail -n %s %s -----\n' "$lines" "$f"
        tail -n "$lines" "$f"
    done
}

# Sends TERM, waits up to $2 seconds, then KILLs.
terminate() {
    local pid=$1 secs=$2 i
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# Starts the node's Erlang VM (rabbitmq-server) for the node described by the
# loaded broker.env, on its recorded ports, and waits until it accepts AMQP
# connections (deadline: $BOOT_TIMEOUT s). Expects epmd to be running. On
# failure prints the reason on stdout and returns 1.
boot_server() {
    local dir=$1
    # A pid file left by a killed VM would make `rabbitmqctl wait` watch a
    # dead process.
    rm -f "$dir/rabbit.pid" "$dir/server.pid"
    (
        node_env
        cd "$dir"
        export RABBITMQ_NODE_PORT=$B_NODE_PORT
        export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        export RABBITMQ_DIST_PORT=$B_DIST_PORT
        export RABBITMQ_MNESIA_BASE=$dir/mnesia
        export RABBITMQ_LOG_BASE=$dir/log
        export RABBITMQ_FEATURE_FLAGS_FILE=$dir/feature_flags
        export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
        export RABBITMQ_PID_FILE=$dir/rabbit.pid
        export RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
        export RABBITMQ_CONFIG_FILES=$dir/conf.d
        export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
        # Distribution listens on loopback only.
        # B_ERL_ARGS: extra VM flags of cluster members (CPU-light schedulers).
        export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}${B_ERL_ARGS:+ $B_ERL_ARGS}"
        # A background job of a non-interactive shell is not a process-group
        # leader, so setsid execs in place and $! is the server's PID.
        setsid "$RABBITMQ_BIN_DIR/rabbitmq-server" </dev/null >>"$dir/server.out" 2>&1 &
        echo $! >"$dir/server.pid"
    )
    local server_pid i
    server_pid=$(cat "$dir/server.pid")

    # Readiness: `rabbitmqctl wait PIDFILE` returns once the pid file exists,
    # the node answers on distribution and the rabbit app is running. It
    # would wait forever for a pid file of a server that already died, so
    # poll the server process alongside it, under one deadline.
    ctl wait "$dir/rabbit.pid" --timeout "$BOOT_TIMEOUT" </dev/null >"$dir/wait.out" 2>&1 &
    local wait_pid=$! deadline=$(($(now_ms) + BOOT_TIMEOUT * 1000)) failure=""
    while alive "$wait_pid"; do
        if ! alive "$server_pid"; then
            failure="rabbitmq-server exited during boot"
            break
        fi
        if (($(now_ms) > deadline)); then
            failure="node did not come up within ${BOOT_TIMEOUT}s"
            break
        fi
        sleep 0.1
    done
    if [[ -z $failure ]]; then
        wait "$wait_pid" || failure="rabbitmqctl wait failed (node did not come up within ${BOOT_TIMEOUT}s?)"
    else
        terminate "$wait_pid" 2
    fi
    # The AMQP listeners must accept connections too (they are opened late
    # in the boot sequence; `wait` already covers them, this is a cheap
    # check), the amqps one included when there is one.
    local port
    for port in "$B_NODE_PORT" ${B_TLS_PORT:+"$B_TLS_PORT"}; do
        [[ -z $failure ]] || break
        for ((i = 0; i < 100; i++)); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.05
        done
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null ||
            failure="AMQP port $port does not accept connections"
    done
    if [[ -n $failure ]]; then
        echo "$failure"
        return 1
    fi
}

cmd_start() {
    local dir=${1:-} watch_pid="" certdir=""
    [[ -n $dir ]] || usage
    shift
    while (($#)); do
        case $1 in
        --watch-pid)
            watch_pid=${2:?--watch-pid needs a PID}
            shift 2
            ;;
        --tls)
            certdir=${2:?--tls needs a directory holding ca.pem, server.pem and server.key}
            shift 2
            ;;
        *) usage ;;
        esac
    done
    if [[ -n $certdir ]]; then
        local f
        for f in ca.pem server.pem server.key; do
            [[ -r $certdir/$f ]] || die "--tls $certdir: $f is missing or unreadable"
        done
    fi

    [[ -x $RABBITMQ_BIN_DIR/rabbitmq-server ]] ||
        die "$RABBITMQ_BIN_DIR/rabbitmq-server not found; install it: apt-get install -y rabbitmq-server"
    command -v epmd >/dev/null || die "epmd not found (Debian package erlang-base)"
    command -v setsid >/dev/null || die "setsid not found (Debian package util-linux)"

    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ -f $dir/broker.env ]]; then
        die "$dir already holds a node; stop it first: $SELF stop $dir"
    fi

    B_DIR=$dir
    B_NODE_PORT=$(pick_port)
    B_DIST_PORT=$(pick_port "$B_NODE_PORT")
    B_EPMD_PORT=$(pick_port "$B_NODE_PORT" "$B_DIST_PORT")
    B_NODE="amqpgw-$$-$RANDOM@localhost"
    # Optional plugins (BROKER_PLUGINS), as the Erlang list of enabled_plugins.
    local plugins="" p want=${BROKER_PLUGINS:-}
    for p in ${want//,/ }; do
        [[ $p =~ ^[a-z0-9_]+$ ]] || die "BROKER_PLUGINS: bad plugin name '$p'"
        plugins+="${plugins:+,}$p"
    done
    B_TLS_PORT=""
    if [[ -n $certdir ]]; then
        B_TLS_PORT=$(pick_port "$B_NODE_PORT" "$B_DIST_PORT" "$B_EPMD_PORT")
    fi
    B_MGMT_PORT=""
    if [[ ,$plugins, == *,rabbitmq_management,* ]]; then
        B_MGMT_PORT=${BROKER_MGMT_PORT:-$(pick_port "$B_NODE_PORT" "$B_DIST_PORT" "$B_EPMD_PORT" ${B_TLS_PORT:+"$B_TLS_PORT"})}
        [[ $B_MGMT_PORT =~ ^[0-9]+$ ]] || die "BROKER_MGMT_PORT must be a port number"
    fi

    # State layout. The cookie must be readable by its owner only, or erl
    # refuses to start distribution.
    mkdir -p "$dir/mnesia" "$dir/log" "$dir/conf.d"
    : >"$dir/rabbitmq-env.conf"
    echo "[$plugins]." >"$dir/enabled_plugins"
    rm -f "$dir/.erlang.cookie"
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$dir/.erlang.cookie")
    chmod 400 "$dir/.erlang.cookie"
    cat >"$dir/rabbitmq.conf" <<EOF
# Private test node; see scripts/broker.sh.
loopback_users.guest = true
log.console = false
log.file.level = info
# Tests run on small CI disks; alarms are set explicitly by fault tests.
disk_free_limit.absolute = 1MB
EOF
    if [[ -n $B_MGMT_PORT ]]; then
        printf 'management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = %s\n' "$B_MGMT_PORT" >>"$dir/rabbitmq.conf"
    fi
    if [[ -n $B_TLS_PORT ]]; then
        # Copied, so that the node (and `up`) does not depend on CERTDIR
        # staying around; the key readable by its owner only.
        mkdir -p "$dir/tls"
        cp "$certdir/ca.pem" "$certdir/server.pem" "$dir/tls/"
        (umask 077 && cp "$certdir/server.key" "$dir/tls/server.key")
        cat >>"$dir/rabbitmq.conf" <<EOF
# amqps next to amqp (broker.sh start --tls). verify_peer checks a client
# certificate when one is presented; fail_if_no_peer_cert = false lets
# clients without one connect too.
listeners.ssl.default = 127.0.0.1:$B_TLS_PORT
ssl_options.cacertfile = $dir/tls/ca.pem
ssl_options.certfile = $dir/tls/server.pem
ssl_options.keyfile = $dir/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
EOF
    fi
    {
        printf 'B_DIR=%q\n' "$B_DIR"
        printf 'B_NODE=%q\n' "$B_NODE"
        printf 'B_NODE_PORT=%q\n' "$B_NODE_PORT"
        printf 'B_DIST_PORT=%q\n' "$B_DIST_PORT"
        printf 'B_EPMD_PORT=%q\n' "$B_EPMD_PORT"
        printf 'B_MGMT_PORT=%q\n' "$B_MGMT_PORT"
        printf 'B_TLS_PORT=%q\n' "$B_TLS_PORT"
    } >"$dir/broker.env"

    local t0
    t0=$(now_ms)
    log "booting $B_NODE (amqp 127.0.0.1:$B_NODE_PORT${B_TLS_PORT:+, amqps 127.0.0.1:$B_TLS_PORT}, dist $B_DIST_PORT, epmd $B_EPMD_PORT${B_MGMT_PORT:+, management http $B_MGMT_PORT}) in $dir"

    # Everything is started with setsid and no inherited stdio: a terminal's
    # Ctrl-C must not kill it half-way, and `$(broker.sh start ...)` or
    # `cargo test | tee` must not wait for these long-lived processes to
    # close a pipe.
    (
        node_env
        cd "$dir"
        setsid epmd -port "$B_EPMD_PORT" -address 127.0.0.1 </dev/null >"$dir/epmd.out" 2>&1 &
        echo $! >"$dir/epmd.pid"
    )
    local i
    for ((i = 0; i < 100; i++)); do
        epmd -port "$B_EPMD_PORT" -names >/dev/null 2>&1 && break
        sleep 0.05
    done
    epmd -port "$B_EPMD_PORT" -names >/dev/null 2>&1 || {
        show_logs "$dir" >&2
        cmd_stop "$dir"
        die "private epmd did not come up on port $B_EPMD_PORT"
    }

    local failure
    if ! failure=$(boot_server "$dir"); then
        log "error: $failure"
        show_logs "$dir" >&2
        cmd_stop "$dir"
        exit 1
    fi
    log "node $B_NODE up in $(($(now_ms) - t0)) ms"

    [[ -n $watch_pid ]] && start_watchdog "$watch_pid" "$dir" stop

    print_exports
}

# Detached watchdog: outlives a SIGKILLed owner PID, ignores the terminal's
# signals, and runs `broker.sh STOPCMD DIR --remove` once the owner is gone.
start_watchdog() {
    local owner=$1 dir=$2 stop_cmd=$3
    # shellcheck disable=SC2016 # $1.. expand in the inner sh
    setsid sh -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec bash "$2" "$3" "$4" --remove' \
        broker-watchdog "$owner" "$SELF" "$stop_cmd" "$dir" </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/watchdog.pid"
}

cmd_stop() {
    local dir=${1:-} remove=0
    [[ -n $dir ]] || usage
    [[ ${2:-} == --remove ]] && remove=1
    if ! [[ -d $dir ]]; then
        return 0
    fi
    if load_env "$dir"; then
        local watchdog_pid beam_pid server_pid epmd_pid
        watchdog_pid=$(cat "$dir/watchdog.pid" 2>/dev/null || true)
        beam_pid=$(cat "$dir/rabbit.pid" 2>/dev/null || true)
        server_pid=$(cat "$dir/server.pid" 2>/dev/null || true)
        epmd_pid=$(cat "$dir/epmd.pid" 2>/dev/null || true)

        # The watchdog exec's into `stop`, keeping its PID: don't kill
        # ourselves. Only kill it if it still is our watchdog.
        if [[ -n $watchdog_pid && $watchdog_pid != "$$" ]] && alive "$watchdog_pid" &&
            tr '\0' ' ' <"/proc/$watchdog_pid/cmdline" 2>/dev/null | grep -qF -- "$dir"; then
            kill "$watchdog_pid" 2>/dev/null || true
        fi

        if alive "$beam_pid"; then
            # Graceful stop; `stop PIDFILE` returns once the OS process exited.
            ctl stop "$dir/rabbit.pid" </dev/null >"$dir/stop.out" 2>&1 &
            local stop_pid=$! i
            for ((i = 0; i < 600; i++)); do
                alive "$stop_pid" || break
                sleep 0.1
            done
            terminate "$stop_pid" 1
            terminate "$beam_pid" 10
        fi
        # The rabbitmq-server shell wrapper exits with the VM.
        terminate "$server_pid" 5
        # Kill epmd last: rabbitmqctl needs it to find the node. A cluster
        # member's epmd is shared with the other members: cluster-stop's.
        if [[ -z ${B_CLUSTER_DIR:-} ]]; then
            terminate "$epmd_pid" 2
            # A rabbitmqctl that found our epmd dead may have spawned another
            # (daemonized, PID unknown) on our port; ask it to quit.
            epmd -port "$B_EPMD_PORT" -kill >/dev/null 2>&1 || true
        fi
        rm -f "$dir/broker.env"
    fi
    if ((remove)); then
        rm -rf "$dir"
    fi
}

# Stops the node's Erlang VM only (epmd, watchdog, state and ports stay), for
# fault tests; `up` boots it again on the same ports.
cmd_down() {
    local dir=${1:-} hard=0
    [[ -n $dir ]] || usage
    [[ ${2:-} == --kill ]] && hard=1
    load_env "$dir" || die "no node in $dir"
    local beam_pid server_pid i
    beam_pid=$(cat "$dir/rabbit.pid" 2>/dev/null || true)
    server_pid=$(cat "$dir/server.pid" 2>/dev/null || true)
    alive "$beam_pid" || die "node $B_NODE is not running"
    if ((hard)); then
        # A crash: no connection.close to clients, the kernel resets the sockets.
        kill -KILL "$beam_pid" 2>/dev/null || true
    else
        ctl stop "$dir/rabbit.pid" </dev/null >"$dir/stop.out" 2>&1 &
        local stop_pid=$!
        for ((i = 0; i < 600; i++)); do
            alive "$stop_pid" || break
            sleep 0.1
        done
        terminate "$stop_pid" 1
        terminate "$beam_pid" 10
    fi
    for ((i = 0; i < 100; i++)); do
        alive "$beam_pid" || break
        sleep 0.1
    done
    terminate "$server_pid" 5
    alive "$beam_pid" && die "node $B_NODE did not stop"
    log "node $B_NODE is down ($( ((hard)) && echo killed || echo stopped))"
}

cmd_up() {
    local dir=${1:-} failure t0
    [[ -n $dir ]] || usage
    load_env "$dir" || die "no node in $dir"
    alive "$(cat "$dir/rabbit.pid" 2>/dev/null || true)" && die "node $B_NODE is already running"
    epmd -port "$B_EPMD_PORT" -names >/dev/null 2>&1 || die "the node's epmd (port $B_EPMD_PORT) is gone"
    t0=$(now_ms)
    if ! failure=$(boot_server "$dir"); then
        log "error: $failure"
        show_logs "$dir" >&2
        exit 1
    fi
    log "node $B_NODE up again in $(($(now_ms) - t0)) ms"
}

# --- Clusters ------------------------------------------------------------------

# CPU-light VM flags for cluster members: N VMs share a small machine. One
# scheduler (and one dirty CPU scheduler), no busy-waiting of idle
# schedulers, a small async pool.
CLUSTER_ERL_ARGS="+S 1:1 +SDcpu 1:1 +sbwt none +sbwtdcpu none +sbwtdio none +A 4"

# The loaded cluster (DIR/cluster.env): its DIR, size, shared epmd port and
# the members' Erlang names (space-separated, n1 first).
C_DIR="" C_N=0 C_EPMD_PORT="" C_NODES=""

# Loads DIR/cluster.env (written by `cluster-start`) into the current shell.
load_cluster_env() {
    local dir=$1
    [[ -f $dir/cluster.env ]] || return 1
    # shellcheck disable=SC1091
    . "$dir/cluster.env"
}

print_cluster_exports() {
    local k urls="" dirs=""
    for ((k = 1; k <= C_N; k++)); do
        load_env "$C_DIR/n$k" || die "member $C_DIR/n$k has no broker.env"
        urls+="${urls:+ }amqp://guest:guest@127.0.0.1:$B_NODE_PORT/%2f"
        dirs+="${dirs:+ }$C_DIR/n$k"
    done
    printf 'export AMQP_CLUSTER_URLS=%q\n' "$urls"
    printf 'export AMQP_CLUSTER_NODES=%q\n' "$C_NODES"
    printf 'export AMQP_CLUSTER_DIRS=%q\n' "$dirs"
    printf 'export AMQP_CLUSTER_HOME=%q\n' "$C_DIR"
    printf 'export AMQP_CLUSTER_EPMD_PORT=%q\n' "$C_EPMD_PORT"
    printf 'export AMQP_CLUSTER_DIR=%q\n' "$C_DIR"
}

cluster_logs() {
    local dir=$1 lines=${2:-40} m f
    for f in "$dir"/epmd.out "$dir"/cluster.out; do
        [[ -s $f ]] || continue
        printf -- '----- tail -n %s %s -----\n' "$lines" "$f"
        tail -n "$lines" "$f"
    done
    for m in "$dir"/n[0-9]*; do
        [[ -d $m ]] || continue
        printf -- '===== member %s =====\n' "$m"
        show_logs "$m" "$lines"
    done
}

# `"running_nodes":[...]` of the member whose broker.env is loaded.
running_nodes() {
    ctl cluster_status --formatter json </dev/null 2>/dev/null |
        grep -o '"running_nodes":\[[^]]*\]' || true
}

# True when the loaded member's cluster_status lists every node of $C_NODES
# as running.
all_running() {
    local running node
    running=$(running_nodes)
    for node in $C_NODES; do
        [[ $running == *"\"$node\""* ]] || return 1
    done
}

cmd_cluster_start() {
    local dir=${1:-} n=${2:-} watch_pid=""
    [[ -n $dir && -n $n ]] || usage
    shift 2
    while (($#)); do
        case $1 in
        --watch-pid)
            watch_pid=${2:?--watch-pid needs a PID}
            shift 2
            ;;
        *) usage ;;
        esac
    done
    [[ $n =~ ^[2-5]$ ]] || die "cluster-start: N must be 2..5, not '$n'"
    [[ -x $RABBITMQ_BIN_DIR/rabbitmq-server ]] ||
        die "$RABBITMQ_BIN_DIR/rabbitmq-server not found; install it: apt-get install -y rabbitmq-server"
    command -v epmd >/dev/null || die "epmd not found (Debian package erlang-base)"
    command -v setsid >/dev/null || die "setsid not found (Debian package util-linux)"

    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [[ -f $dir/cluster.env ]] && die "$dir already holds a cluster; stop it first: $SELF cluster-stop $dir"
    [[ -f $dir/broker.env ]] && die "$dir holds a single node; stop it first: $SELF stop $dir"

    local epmd_port k tag nodes=() node_ports=() dist_ports=() taken=()
    epmd_port=$(pick_port)
    taken=("$epmd_port")
    tag="amqpgw-$$-$RANDOM"
    for ((k = 1; k <= n; k++)); do
        nodes+=("$tag-n$k@localhost")
        node_ports+=("$(pick_port "${taken[@]}")")
        taken+=("${node_ports[-1]}")
        dist_ports+=("$(pick_port "${taken[@]}")")
        taken+=("${dist_ports[-1]}")
    done

    # One cookie for all members (and for rabbitmqctl with HOME=DIR).
    rm -f "$dir/.erlang.cookie"
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$dir/.erlang.cookie")
    chmod 400 "$dir/.erlang.cookie"
    {
        printf 'C_DIR=%q\n' "$dir"
        printf 'C_N=%q\n' "$n"
        printf 'C_EPMD_PORT=%q\n' "$epmd_port"
        printf 'C_NODES=%q\n' "${nodes[*]}"
    } >"$dir/cluster.env"
    load_cluster_env "$dir"

    local peers="" m
    for ((k = 1; k <= n; k++)); do
        peers+="cluster_formation.classic_config.nodes.$k = ${nodes[k - 1]}"$'\n'
    done
    for ((k = 1; k <= n; k++)); do
        m=$dir/n$k
        mkdir -p "$m/mnesia" "$m/log" "$m/conf.d"
        : >"$m/rabbitmq-env.conf"
        echo "[]." >"$m/enabled_plugins"
        rm -f "$m/.erlang.cookie"
        cp "$dir/.erlang.cookie" "$m/.erlang.cookie"
        chmod 400 "$m/.erlang.cookie"
        cat >"$m/rabbitmq.conf" <<CONF
# Member n$k of a private test cluster; see scripts/broker.sh cluster-start.
loopback_users.guest = true
log.console = false
log.file.level = info
disk_free_limit.absolute = 1MB
# A blank node joins the running members it finds among these.
cluster_formation.peer_discovery_backend = classic_config
${peers}# A node frozen (SIGSTOP) past net_ticktime and resumed must not leave the
# cluster split for good.
cluster_partition_handling = autoheal
CONF
        {
            printf 'B_DIR=%q\n' "$m"
            printf 'B_NODE=%q\n' "${nodes[k - 1]}"
            printf 'B_NODE_PORT=%q\n' "${node_ports[k - 1]}"
            printf 'B_DIST_PORT=%q\n' "${dist_ports[k - 1]}"
            printf 'B_EPMD_PORT=%q\n' "$epmd_port"
            printf 'B_MGMT_PORT=\n'
            printf 'B_TLS_PORT=\n'
            printf 'B_CLUSTER_DIR=%q\n' "$dir"
            printf 'B_ERL_ARGS=%q\n' "$CLUSTER_ERL_ARGS"
        } >"$m/broker.env"
    done

    local t0
    t0=$(now_ms)
    log "booting a $n-node cluster in $dir (epmd $epmd_port; amqp ports ${node_ports[*]})"
    (
        export HOME=$dir
        cd "$dir"
        setsid epmd -port "$epmd_port" -address 127.0.0.1 </dev/null >"$dir/epmd.out" 2>&1 &
        echo $! >"$dir/epmd.pid"
    )
    local i
    for ((i = 0; i < 100; i++)); do
        epmd -port "$epmd_port" -names >/dev/null 2>&1 && break
        sleep 0.05
    done
    epmd -port "$epmd_port" -names >/dev/null 2>&1 || cluster_fail "$dir" "private epmd did not come up on port $epmd_port"

    # One after the other: a blank node discovers and joins the members that
    # run already (no two nodes race to form their own clusters).
    local failure
    for ((k = 1; k <= n; k++)); do
        load_env "$dir/n$k"
        if ! failure=$(boot_server "$dir/n$k"); then
            cluster_fail "$dir" "n$k ($B_NODE): $failure"
        fi
        if ((k > 1)) && [[ $(running_nodes) != *"\"${nodes[0]}\""* ]]; then
            # Discovery did not join it: join explicitly.
            log "n$k booted on its own; joining ${nodes[0]} with join_cluster"
            {
                ctl stop_app &&
                    ctl join_cluster "${nodes[0]}" &&
                    ctl start_app
            } </dev/null >>"$dir/cluster.out" 2>&1 ||
                cluster_fail "$dir" "n$k ($B_NODE) could not join ${nodes[0]}"
        fi
        log "n$k ($B_NODE) up after $(($(now_ms) - t0)) ms"
    done

    # Every member must see all N running.
    local deadline=$(($(now_ms) + BOOT_TIMEOUT * 1000)) ok
    for ((k = 1; k <= n; k++)); do
        load_env "$dir/n$k"
        ok=0
        while (($(now_ms) < deadline)); do
            if all_running; then
                ok=1
                break
            fi
            sleep 0.2
        done
        ((ok)) || cluster_fail "$dir" "n$k ($B_NODE) does not list all $n nodes running: $(running_nodes)"
    done
    log "cluster of $n up in $(($(now_ms) - t0)) ms: $C_NODES"

    [[ -n $watch_pid ]] && start_watchdog "$watch_pid" "$dir" cluster-stop
    print_cluster_exports
}

# Prints the reason and every member's logs, stops what cluster-start
# started (keeping DIR and its logs) and exits 1.
cluster_fail() {
    local dir=$1
    log "error: $2"
    cluster_logs "$dir" 40 >&2
    cmd_cluster_stop "$dir"
    exit 1
}

cmd_cluster_stop() {
    local dir=${1:-} remove=0
    [[ -n $dir ]] || usage
    [[ ${2:-} == --remove ]] && remove=1
    [[ -d $dir ]] || return 0
    if load_cluster_env "$dir"; then
        local watchdog_pid epmd_pid m pid pids=()
        watchdog_pid=$(cat "$dir/watchdog.pid" 2>/dev/null || true)
        if [[ -n $watchdog_pid && $watchdog_pid != "$$" ]] && alive "$watchdog_pid" &&
            tr '\0' ' ' <"/proc/$watchdog_pid/cmdline" 2>/dev/null | grep -qF -- "$dir"; then
            kill "$watchdog_pid" 2>/dev/null || true
        fi
        # Throwaway state: no graceful stop (which, member after member,
        # costs seconds each). A frozen VM dies of SIGKILL too.
        for m in "$dir"/n[0-9]*; do
            for pid in "$(cat "$m/rabbit.pid" 2>/dev/null || true)" "$(cat "$m/server.pid" 2>/dev/null || true)"; do
                if alive "$pid"; then
                    kill -KILL "$pid" 2>/dev/null || true
                    pids+=("$pid")
                fi
            done
            rm -f "$m/broker.env"
        done
        local i
        for pid in "${pids[@]}"; do
            for ((i = 0; i < 50; i++)); do
                alive "$pid" || break
                sleep 0.1
            done
        done
        epmd_pid=$(cat "$dir/epmd.pid" 2>/dev/null || true)
        terminate "$epmd_pid" 2
        epmd -port "$C_EPMD_PORT" -kill >/dev/null 2>&1 || true
        rm -f "$dir/cluster.env"
    fi
    if ((remove)); then
        rm -rf "$dir"
    fi
}

main() {
    local cmd=${1:-}
    (($#)) && shift
    case $cmd in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    down) cmd_down "$@" ;;
    up) cmd_up "$@" ;;
    ctl)
        local dir=${1:-}
        [[ -n $dir ]] || usage
        shift
        load_env "$dir" || die "no node in $dir"
        ctl "$@"
        ;;
    env)
        [[ -n ${1:-} ]] || usage
        load_env "$1" || die "no node in $1"
        print_exports
        ;;
    logs)
        [[ -n ${1:-} ]] || usage
        if [[ -f $1/cluster.env ]]; then
            cluster_logs "$1" "${2:-40}"
        else
            show_logs "$1" "${2:-40}"
        fi
        ;;
    cluster-start) cmd_cluster_start "$@" ;;
    cluster-stop) cmd_cluster_stop "$@" ;;
    cluster-env)
        [[ -n ${1:-} ]] || usage
        load_cluster_env "$1" || die "no cluster in $1"
        print_cluster_exports
        ;;
    *) usage ;;
    esac
}

main "$@"
