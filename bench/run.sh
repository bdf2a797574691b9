#!/usr/bin/env bash
# bench/run.sh — every benchmark comparison of BENCHMARKS.md, with one command.
#
#   bench/run.sh                     # everything, ~10 minutes on the 2-core machine
#   bench/run.sh --duration 5        # shorter runs
#   bench/run.sh --sections write --write-conns 64 --write-systems gateway,raw-lapin
#   bench/run.sh --help              # all options (bench/harness.py)
#
# 1. installs what is missing (wrk, nginx and its brotli filter module, rabbitmq-server with
#    apt-get; Flask, pika and
#    gunicorn into bench/.venv with pip);
# 2. builds the release gateway and the examples it needs (users_service, bench_publisher,
#    mint_token);
# 3. runs bench/harness.py: a private RabbitMQ node with the management plugin
#    (scripts/broker.sh), the origin, the gateway, nginx and gunicorn on free 127.0.0.1 ports,
#    then every load run, each bounded in time (wrk -d plus a watchdog);
# 4. writes raw results to bench/results/<timestamp>/ (runs.jsonl, meta.json, logs) and
#    prints the tables (also saved as tables.md there).
#
# Loopback only. Benchmarks are not tests: nothing here gates CI. For publishable numbers run
# it on a quiet machine; every run records how much CPU other processes used meanwhile.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
ROOT=$(pwd)

for arg in "$@"; do
    if [[ $arg == -h || $arg == --help ]]; then
        sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
        exec python3 bench/harness.py --help
    fi
done

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || need_apt+=(nginx)
# br for the matched nginx (iOS and browsers ask for it).
[[ -e /usr/lib/nginx/modules/ngx_http_brotli_filter_module.so ]] ||
    need_apt+=(libnginx-mod-http-brotli-filter)
[[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || need_apt+=(rabbitmq-server)
if ((${#need_apt[@]})); then
    echo "bench: installing ${need_apt[*]}" >&2
    # Keep the packages' maintainer scripts from starting system services.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
    rm -f /usr/sbin/policy-rc.d
fi

VENV=$ROOT/bench/.venv
if ! [[ -x $VENV/bin/gunicorn ]] || ! "$VENV/bin/python" -c 'import flask, pika' 2>/dev/null; then
    echo "bench: creating $VENV (flask, pika, gunicorn)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q flask pika gunicorn >&2
fi

echo "bench: building (release)" >&2
cargo build --release -q --bin amqp-gateway \
    --example users_service --example bench_publisher --example mint_token >&2

# 1,000 connections for the resources run, plus the broker's and the origin's.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

OUT=$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
echo "bench: results in $OUT" >&2
exec python3 "$ROOT/bench/harness.py" --out "$OUT" --venv "$VENV" "$@"
