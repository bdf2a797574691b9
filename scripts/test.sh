#!/usr/bin/env bash
# scripts/test.sh — the one command that runs the whole suite, on a fresh
# Debian machine or a dev box, from any working directory.
#
#   1. installs missing system packages (rabbitmq-server, nginx, wrk, ...)
#      with apt-get, without letting their maintainer scripts start the
#      system services (we never use the system RabbitMQ or nginx);
#   2. cargo fmt --check, cargo clippy -D warnings, cargo-deny (deny.toml,
#      scripts/deny.sh; full runs only);
#   3. boots ONE private RabbitMQ node for the whole run (scripts/broker.sh)
#      and exports AMQP_TEST_URL / AMQP_TEST_NODE / AMQP_TEST_NODE_HOME /
#      AMQP_TEST_EPMD_PORT / AMQP_TEST_BROKER_DIR so every test binary
#      reuses it (see tests/support/broker.rs); it is stopped on exit, and
#      by a watchdog if this script is SIGKILLed;
#   4. installs the pinned contract validators (npm ci, tests/spec/install.sh)
#      under target/spec-validators and exports SPEC_VALIDATORS_DIR;
#   5. cargo test --all-targets (+ doc tests when there is a library).
#      tests/cluster.rs boots its own private 3-node cluster besides
#      (broker.sh cluster-start; ~20 s boot, ~1.5-2 min in all, every phase
#      under a hard deadline, boot failures end with the members' logs).
#
# Usage:
#   scripts/test.sh                  # everything
#   scripts/test.sh --test NAME ...  # lint, then `cargo test ARGS...` only
#
# Environment:
#   AMQP_TEST_URL     use this broker instead of booting one (AMQP_TEST_NODE
#                     etc. are then passed through as they are)
#   CARGO_TEST_LOCKED set to 0 to drop --locked from cargo invocations
#
# Exits non-zero on any failure.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
ROOT=$(pwd)

step() { printf '\n==> %s\n' "$*" >&2; }
die() {
    printf 'test.sh: error: %s\n' "$*" >&2
    exit 1
}

LOCKED=(--locked)
[[ ${CARGO_TEST_LOCKED:-1} == 0 ]] && LOCKED=()

BROKER_DIR=""
POLICY_RC_CREATED=0
SUDO=()

cleanup() {
    local rc=$?
    if ((POLICY_RC_CREATED)); then
        "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d || true
    fi
    if [[ -n $BROKER_DIR ]]; then
        if ((rc != 0)); then
            step "tests failed; tail of the broker's logs"
            "$ROOT/scripts/broker.sh" logs "$BROKER_DIR" 30 >&2 || true
        fi
        step "stopping private RabbitMQ node"
        "$ROOT/scripts/broker.sh" stop "$BROKER_DIR" --remove || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. System packages -----------------------------------------------------

# rabbitmq-server: the broker under test; nginx: proxied reads (tests and
# demo); wrk: load tests; curl/ca-certificates: demo and debugging;
# gcc/libc6-dev: linker for cargo; util-linux (setsid) and coreutils
# (timeout, flock) are Essential on Debian; nodejs/npm are checked below.
PACKAGES=(rabbitmq-server nginx wrk curl ca-certificates gcc libc6-dev)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
# nodejs + npm: the contract validators (tests/spec.rs, tests/spec/install.sh). Checked by
# command, not by package: NodeSource's nodejs bundles npm and conflicts with Debian's npm
# package, and any node >= 18.17 with its npm will do (Debian 12's is 18.19).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    missing+=(nodejs npm)
fi
if ((${#missing[@]})); then
    step "installing missing packages: ${missing[*]}"
    command -v apt-get >/dev/null || die "apt-get not found; install manually: ${missing[*]}"
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || die "not root and no sudo; install manually: ${missing[*]}"
        SUDO=(sudo)
    fi
    # Deny service starts during installation (as Docker images do): the
    # rabbitmq-server and nginx postinst scripts would otherwise start the
    # system services on 5672/4369/80. An existing policy is left alone.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# temporary, scripts/test.sh\nexit 101\n' |
            "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}"
    if ((POLICY_RC_CREATED)); then
        "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=0
    fi
fi

command -v cargo >/dev/null || die "cargo not found (the Rust toolchain is expected to be installed)"
for component in fmt:rustfmt clippy:clippy; do
    if ! cargo "${component%%:*}" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null ||
            die "cargo ${component%%:*} missing and no rustup to add ${component##*:}"
        step "adding toolchain component ${component##*:}"
        rustup component add "${component##*:}"
    fi
done

# --- 2. Lint ------------------------------------------------------------------

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy "${LOCKED[@]}" --all-targets -- -D warnings

if ((!$#)); then
    step "cargo-deny: licenses, bans, sources, advisories (deny.toml)"
    "$ROOT/scripts/deny.sh"
fi

# --- 3. Broker ---------------------------------------------------------------

if [[ -n ${AMQP_TEST_URL:-} ]]; then
    step "using the broker given by AMQP_TEST_URL=$AMQP_TEST_URL"
else
    step "booting a private RabbitMQ node for the whole run"
    BROKER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/amqp-gateway-ci.XXXXXX")
    # Ports are picked free and bound later: another node booting at that moment can take
    # one first. Try fresh ports twice more before giving up.
    for attempt in 1 2 3; do
        if exports=$("$ROOT/scripts/broker.sh" start "$BROKER_DIR" --watch-pid $$); then
            break
        fi
        ((attempt < 3)) || die "could not boot the private RabbitMQ node (3 attempts)"
        step "broker boot failed (attempt $attempt); retrying on fresh ports"
        rm -rf "$BROKER_DIR" && mkdir -p "$BROKER_DIR"
    done
    eval "$exports"
    export AMQP_TEST_URL AMQP_TEST_NODE AMQP_TEST_NODE_HOME AMQP_TEST_EPMD_PORT AMQP_TEST_BROKER_DIR
    printf '%s\n' "$exports" >&2
fi

# --- 4. Contract validators ---------------------------------------------------

# Pinned in tests/spec/package-lock.json; installed once under target/ (npm ci), a no-op
# when already there. tests/spec.rs finds them through SPEC_VALIDATORS_DIR.
step "contract validators (tests/spec/install.sh)"
SPEC_VALIDATORS_DIR=$("$ROOT/tests/spec/install.sh")
export SPEC_VALIDATORS_DIR

# --- 5. Tests ----------------------------------------------------------------

if (($#)); then
    step "cargo test $*"
    cargo test "${LOCKED[@]}" "$@"
else
    step "cargo test --all-targets"
    cargo test "${LOCKED[@]}" --all-targets
    if [[ -f src/lib.rs ]]; then
        step "cargo test --doc"
        cargo test "${LOCKED[@]}" --doc
    fi
fi

step "all checks passed"
