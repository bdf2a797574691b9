#!/usr/bin/env bash
# tests/spec/install.sh [DIR] — installs the contract validators pinned in
# tests/spec/package-lock.json (@asyncapi/parser, @redocly/openapi-core) into
# DIR (default: $CARGO_TARGET_DIR/spec-validators, or target/spec-validators)
# with `npm ci`, and prints DIR. Idempotent: nothing is done when DIR already
# holds exactly this lock file's install. Needs node (>= 18.17) and npm; the
# npm registry only on the first run (or after the lock file changes).
# Concurrent runs are serialised with flock(1) (util-linux, Essential on Debian).
set -euo pipefail

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DIR=${1:-${CARGO_TARGET_DIR:-$ROOT/target}/spec-validators}

command -v node >/dev/null || { echo "install.sh: node not found (apt-get install nodejs npm)" >&2; exit 1; }
command -v npm >/dev/null || { echo "install.sh: npm not found (apt-get install npm)" >&2; exit 1; }

mkdir -p "$DIR"
exec 9>"$DIR.lock"
flock 9
# npm ci writes node_modules/.package-lock.json last; with our lock file next to it, the
# install is complete and current.
if cmp -s "$HERE/package-lock.json" "$DIR/package-lock.json" &&
    [[ -f $DIR/node_modules/.package-lock.json ]]; then
    printf '%s\n' "$DIR"
    exit 0
fi
cp "$HERE/package.json" "$HERE/package-lock.json" "$DIR/"
# --ignore-scripts: none of the validators needs an install script, and none should run.
(cd "$DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2)
printf '%s\n' "$DIR"
